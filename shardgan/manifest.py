"""`manifest.json`: what a packed dataset holds, written by pack, trusted by the loader.

The manifest is the contract between pack and loader. It lists, per split, every
shard with its sample count, byte size, sha256 and the byte offset of each sample
inside the tar, so the loader can seek straight to sample i of a shard.

Version 2 stores a split's offsets as one little-endian integer array (base64) instead
of a JSON list per shard: at 1M samples that is 5 MB of text and 4 MB of memory per
process, where version 1's lists of Python ints cost ~55 MB that forked DataLoader
workers copy page by page as they touch them. Version 1 manifests still load.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_bytes_atomic
from .errors import DataError
from .frames import Skip

FORMAT_NAME = "shardgan"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
OFFSET_DTYPES = ("<u4", "<u8")


@dataclass(slots=True)  # slots: 10,000 shards cost ~3 MB less per process
class ShardInfo:
    name: str
    """File name relative to the dataset directory, e.g. train-000000.tar."""
    num_samples: int
    num_bytes: int
    sha256: str
    offsets: Sequence[int]
    """num_samples + 1 byte offsets: sample i spans [offsets[i], offsets[i+1]) of the tar.
    A view into the split's one numpy array once loaded; a list when pack has just written it."""


@dataclass
class SplitInfo:
    shards: list[ShardInfo] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def num_bytes(self) -> int:
        return sum(s.num_bytes for s in self.shards)


@dataclass
class Manifest:
    width: int
    height: int
    channels: int
    image_format: str
    """png | jpg | webp | raw (raw is stored as .npy, uint8 H x W x C)."""
    splits: dict[str, SplitInfo]
    pack_args: dict[str, Any] = field(default_factory=dict)
    num_inputs: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    """Dropped on purpose, by filter name: {"blank": n, "duplicate": n}."""
    skipped: list[Skip] = field(default_factory=list)
    """Inputs that could not be used; on disk [{"path": ..., "reason": ...}]."""
    root: Path = Path(".")
    """Directory the shard names are relative to (not serialized)."""
    origin: str = ""
    """Where manifest.json was read from, a path or a URL, for messages (not serialized)."""

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits or not self.splits[name].shards:
            have = ", ".join(k for k, v in self.splits.items() if v.shards) or "none"
            hint = "; pack with --val, e.g. --val 512, to hold out one" if name == "val" else ""
            raise DataError(f"{self.origin or self.root / MANIFEST_NAME}: no split {name!r} (splits: {have}{hint})")
        return self.splits[name]

    def shard_path(self, shard: ShardInfo) -> Path:
        return self.root / shard.name

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "image": {
                "width": self.width,
                "height": self.height,
                "channels": self.channels,
                "format": self.image_format,
            },
            "pack_args": self.pack_args,
            "num_inputs": self.num_inputs,
            "splits": {
                name: {
                    "num_samples": split.num_samples,
                    "num_bytes": split.num_bytes,
                    "shards": [
                        {"name": s.name, "num_samples": s.num_samples, "num_bytes": s.num_bytes, "sha256": s.sha256}
                        for s in split.shards
                    ],
                    "offsets": _encode_offsets(split.shards),
                }
                for name, split in self.splits.items()
            },
            "filtered": self.filtered,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        text = json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n"
        write_bytes_atomic(path, text.encode())
        return path


def manifest_path(location: str | Path) -> Path:
    location = Path(location)
    return location if location.suffix == ".json" else location / MANIFEST_NAME


def load_manifest(location: str | Path) -> Manifest:
    """Read and validate a manifest from a dataset directory or a manifest.json path."""
    path = manifest_path(location)
    if not path.parent.is_dir():
        raise DataError(f"shard directory not found: {path.parent}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"no {MANIFEST_NAME} in {path.parent}: {_not_packed_hint(path.parent)}") from None
    return parse_manifest(data, str(path), path.parent)


def _not_packed_hint(directory: Path) -> str:
    """A command that works as printed: shards without a manifest came from an unfinished pack;
    anything else (a frames folder, most likely) is packed into a folder beside it."""
    if any(directory.glob("*.tar")):
        return "an unfinished pack (it writes the manifest last): rerun the shardgan pack that wrote these shards"
    out = directory.with_name(directory.name + "_shards")
    return f"not a packed dataset; to pack the frames in it: shardgan pack {shlex.quote(str(directory))} {shlex.quote(str(out))}, then data.shards={shlex.quote(str(out))}"


def parse_manifest(data: bytes, origin: str, root: Path = Path(".")) -> Manifest:
    """Validate manifest.json's bytes, read from `origin` (a path or URL, named in errors)."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{origin}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise DataError(f"{origin}: not a shardgan manifest")
    if doc.get("version") not in READABLE_VERSIONS:
        raise DataError(
            f"{origin}: manifest version {doc.get('version')!r} is not supported "
            f"(this shardgan reads versions {', '.join(map(str, READABLE_VERSIONS))}); re-pack the frames"
        )
    try:
        image = doc["image"]
        splits = {name: _parse_split(split, doc["version"]) for name, split in doc["splits"].items()}
        manifest = Manifest(
            width=int(image["width"]),
            height=int(image["height"]),
            channels=int(image["channels"]),
            image_format=str(image["format"]),
            splits=splits,
            pack_args=doc.get("pack_args", {}),
            num_inputs=doc.get("num_inputs", 0),
            filtered=doc.get("filtered", {}),
            skipped=[Skip(s["path"], s["reason"]) for s in doc.get("skipped", [])],
            root=root,
            origin=origin,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{origin}: malformed manifest ({type(e).__name__}: {e})") from None
    for split in manifest.splits.values():
        for shard in split.shards:
            if len(shard.offsets) != shard.num_samples + 1:
                raise DataError(f"{origin}: shard {shard.name} has {len(shard.offsets)} offsets for {shard.num_samples} samples")
    return manifest


def _encode_offsets(shards: list[ShardInfo]) -> dict[str, str]:
    """All shards' offsets, concatenated, as the smallest little-endian dtype that holds them."""
    flat = np.concatenate([np.asarray(s.offsets, np.uint64) for s in shards]) if shards else np.zeros(0, np.uint64)
    dtype = OFFSET_DTYPES[0] if flat.size == 0 or int(flat.max()) < 2**32 else OFFSET_DTYPES[1]
    return {"dtype": dtype, "base64": base64.b64encode(flat.astype(dtype).tobytes()).decode()}


def _parse_split(doc: dict[str, Any], version: int) -> SplitInfo:
    """Shards whose offsets are read-only views into one array (version 1: one array per shard)."""
    fields = ("name", "num_samples", "num_bytes", "sha256")
    if version == 1:
        return SplitInfo([ShardInfo(*(s[f] for f in fields), np.asarray(s["offsets"], np.uint64)) for s in doc["shards"]])
    if doc["offsets"]["dtype"] not in OFFSET_DTYPES:
        raise ValueError(f"offsets dtype {doc['offsets']['dtype']!r} is not one of {OFFSET_DTYPES}")
    flat = np.frombuffer(base64.b64decode(doc["offsets"]["base64"]), np.dtype(doc["offsets"]["dtype"]))
    shards, start = [], 0
    for s in doc["shards"]:
        end = start + int(s["num_samples"]) + 1
        shards.append(ShardInfo(*(s[f] for f in fields), flat[start:end]))
        start = end
    if start != len(flat):
        raise ValueError(f"{len(flat)} offsets for shards that need {start}")
    return SplitInfo(shards)


def check_shards_present(manifest: Manifest, split: str) -> None:
    """Cheap start-up check (stat only): every listed shard exists with its recorded size."""
    for shard in manifest.split(split).shards:
        path = manifest.shard_path(shard)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise DataError(f"shard missing: {path} (listed in {manifest.root / MANIFEST_NAME})") from None
        if size != shard.num_bytes:
            raise DataError(f"shard {path} has {size} bytes, manifest says {shard.num_bytes} (truncated or replaced?)")


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()
