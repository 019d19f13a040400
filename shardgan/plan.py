"""The epoch plan: which sample every rank and worker reads, as a pure function.

The global order of an epoch depends only on (shard sizes, seed, epoch): shards
are shuffled, then the samples inside each shard. It does not depend on world
size or worker count (as in MosaicML streaming), so a position is one number,
`samples_seen`, and a run can resume with another world size or worker count.

Nodes read only their share. The order is cut into C equal pieces, C the run's fixed
number of *canonical nodes* (MosaicML's term; data.canonical_nodes, by default the node
count of the run's first start). Each global batch of G samples takes the next G/C samples
of every piece, laid out piece by piece, and rank r takes the r-th slice of B of that
layout. torchrun numbers the ranks of a node consecutively, so with N nodes dividing C,
node n reads only pieces [n*C/N, (n+1)*C/N): each node fetches about 1/N of the shards
(a shard cut by a piece boundary is read by both neighbours), and its ranks read
contiguous runs of them. After s samples, every piece has given its first s/C, whatever
the world size: an elastic restore continues with nothing repeated or skipped. C = 1 is
the plain order: global batch g covers order[g*G : (g+1)*G].

Every rank gets exactly the same number of batches, however unequal the shards, and the
only samples left out are a remainder smaller than one global batch plus C. Which reading
process fills a batch does not matter: its content depends only on its number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def epoch_order(shard_sizes: Sequence[int], seed: int, epoch: int) -> np.ndarray:
    """(N, 2) int64 array of (shard index, sample index in shard): the epoch's global order."""
    rng = np.random.default_rng([seed, epoch])
    parts = []
    for shard in rng.permutation(len(shard_sizes)):
        n = shard_sizes[shard]
        part = np.empty((n, 2), dtype=np.int64)
        part[:, 0] = shard
        part[:, 1] = rng.permutation(n)
        parts.append(part)
    return np.concatenate(parts) if parts else np.empty((0, 2), dtype=np.int64)


@dataclass(frozen=True)
class RankPlan:
    """What one rank reads in one epoch, from `samples_seen` on."""

    epoch: int
    samples_seen: int
    """Global samples already consumed in this epoch before this plan starts (a multiple of C)."""
    num_samples: int
    world_size: int
    rank: int
    batch_size: int
    canonical_nodes: int = 1

    def __post_init__(self) -> None:
        if self.global_batch % self.canonical_nodes or self.samples_seen % self.canonical_nodes:
            raise ValueError(f"global batch {self.global_batch} and position {self.samples_seen} must be multiples of {self.canonical_nodes} canonical nodes")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def piece(self) -> int:
        """Samples in each canonical node's piece of the order."""
        return self.num_samples // self.canonical_nodes

    @property
    def per_piece(self) -> int:
        """Samples each piece gives to one global batch."""
        return self.global_batch // self.canonical_nodes

    @property
    def num_batches(self) -> int:
        """Batches this rank yields from `samples_seen` to the end of the epoch (same on every rank)."""
        return max(0, self.piece - self.samples_seen // self.canonical_nodes) // self.per_piece

    @property
    def batches_per_epoch(self) -> int:
        return self.piece // self.per_piece

    def batch_indices(self, batch: int) -> np.ndarray:
        """Positions in the epoch order of this rank's `batch`-th batch (counted from samples_seen)."""
        slot = self.rank * self.batch_size + np.arange(self.batch_size)
        piece, offset = np.divmod(slot, self.per_piece)
        return piece * self.piece + self.samples_seen // self.canonical_nodes + batch * self.per_piece + offset

    def batch_positions(self, order: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(stop - start, B, 2): the (shard, index) of every sample of batches [start, stop),
        in one vectorized lookup (the loader takes them a block at a time, not a batch); given
        order's shard column alone, (stop - start, B) shards."""
        stop = self.num_batches if stop is None else stop
        return order[self.batch_indices(start) + self.per_piece * np.arange(stop - start)[:, None]]

    def shard_sequence(self, order: np.ndarray) -> list[int]:
        """The shards this rank reads, in first-use order (what the loader fetches or reads ahead)."""
        return list(dict.fromkeys(self.batch_positions(order[:, 0]).ravel().tolist()))
