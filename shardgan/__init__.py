"""shardgan: pack game frames into WebDataset shards, stream them with exact resume, train DCGANs."""

__version__ = "0.1.0"
