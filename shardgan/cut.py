"""Pack's stage 2 (cheap, no decoding): select the kept frames, shuffle them globally, cut the
splits into shards and write each shard from the encoded bytes in the chunk files.

The cut depends only on the selection and the `CutOptions`, so a shard whose content an earlier
run already wrote is reused, not rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .atomic import write_bytes_atomic
from .chunks import Blank, Kept, Record, WorkList, chunk_path
from .errors import ConfigError, DataError
from .frames import Skip
from .manifest import ShardInfo
from .shards import Sample, sample_bytes, sample_key, write_shard


@dataclass(frozen=True)
class CutOptions:
    """Everything the shuffle and the shard cut depend on (the chunks do not)."""

    seed: int = 0
    val: float = 0
    """>= 1: that many validation samples; in (0, 1): that fraction; 0: no val split."""
    samples_per_shard: int | None = None
    shard_size_bytes: int = 256 * 10**6

    def __post_init__(self) -> None:
        checks = [
            (self.val >= 0 and (self.val < 1 or float(self.val).is_integer()), f"--val must be a count or a fraction in (0, 1), got {self.val}"),
            (self.samples_per_shard is None or self.samples_per_shard >= 1, f"--samples-per-shard must be >= 1, got {self.samples_per_shard}"),
            (self.shard_size_bytes >= 1, f"--shard-size must be positive, got {self.shard_size_bytes}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def num_val(self, num_samples: int) -> int:
        return int(self.val) if self.val >= 1 else round(self.val * num_samples)


@dataclass(frozen=True)
class SampleRef:
    """Where a kept frame's encoded bytes live in the work directory, and its sample identity."""

    chunk: int
    offset: int
    length: int
    key: str
    meta: dict

    @property
    def tar_bytes(self) -> int:
        return sample_bytes(self.meta, self.length)


@dataclass(frozen=True)
class ShardTask:
    name: str
    samples: list[SampleRef]
    dst: str
    work: str
    """The work directory: the chunk files, and the markers of the shards written."""
    image_format: str
    worklist_fingerprint: str

    def identity(self) -> str:
        """Content identity: same work list + same sample list => same bytes, so a shard can be reused."""
        doc = [self.worklist_fingerprint, self.image_format, [(s.key, s.chunk, s.offset) for s in self.samples]]
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


@dataclass
class Selection:
    """Stage 2's view of all records: what is kept (in input order), dropped, skipped."""

    kept: list[SampleRef] = field(default_factory=list)
    filtered: dict[str, int] = field(default_factory=lambda: {"blank": 0, "duplicate": 0})
    skipped: list[Skip] = field(default_factory=list)


def select_samples(work_list: WorkList, records: Iterable[tuple[int, list[Record]]]) -> Selection:
    """Blank frames and exact duplicates (after resizing) are dropped; the first in input order wins.

    `records` are (chunk index, its records) in chunk order.
    """
    selection = Selection(skipped=list(work_list.scan_skipped))
    seen: set[str] = set()
    for index, chunk_records in records:
        for record in chunk_records:
            match record:
                case Skip():
                    selection.skipped.append(record)
                case Blank():
                    selection.filtered["blank"] += 1
                case Kept() if record.duplicate_key in seen:
                    selection.filtered["duplicate"] += 1
                case Kept():
                    seen.add(record.duplicate_key)
                    src = work_list.inputs[record.input_index][0]
                    meta = {"src": src} if record.frame is None else {"src": src, "frame": record.frame}
                    key = sample_key(record.input_index, record.frame)
                    selection.kept.append(SampleRef(index, record.offset, record.length, key, meta))
    selection.skipped.sort(key=lambda s: (s.path, s.reason))
    return selection


def split_and_cut(kept: list[SampleRef], options: CutOptions) -> dict[str, list[list[SampleRef]]]:
    """Seeded global shuffle, the first num_val go to val, then each split is cut into shards."""
    num_val = options.num_val(len(kept))
    if num_val >= len(kept):
        raise DataError(f"--val {options.val:g} asks for {num_val} validation samples but only {len(kept)} frames were kept")
    order = np.random.default_rng(options.seed).permutation(len(kept))
    shuffled = [kept[i] for i in order]
    return {"train": _cut(shuffled[num_val:], options), "val": _cut(shuffled[:num_val], options)}


def _cut(samples: list[SampleRef], options: CutOptions) -> list[list[SampleRef]]:
    if options.samples_per_shard:
        step = options.samples_per_shard
        return [samples[i : i + step] for i in range(0, len(samples), step)]
    shards: list[list[SampleRef]] = []
    current: list[SampleRef] = []
    current_bytes = 0
    for sample in samples:
        if current and current_bytes + sample.tar_bytes > options.shard_size_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(sample)
        current_bytes += sample.tar_bytes
    return shards + [current] if current else shards


def write_shard_task(task: ShardTask) -> ShardInfo:
    """Write one shard (or reuse it if a previous run already wrote this exact content)."""
    dst, work = Path(task.dst), Path(task.work)
    marker = work / "shards" / f"{task.name}.json"
    identity = task.identity()
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        done = json.loads(marker.read_text())
        info = ShardInfo(**done["shard"])
        if done["identity"] == identity and (dst / task.name).stat().st_size == info.num_bytes:
            return info
    payloads = _read_payloads(work, task.samples)
    samples = (Sample(s.key, payloads[s.chunk, s.offset], s.meta) for s in task.samples)
    info = write_shard(dst / task.name, samples, task.image_format)
    marker.parent.mkdir(exist_ok=True)
    write_bytes_atomic(marker, json.dumps({"identity": identity, "shard": asdict(info)}).encode())
    return info


def _read_payloads(work: Path, samples: list[SampleRef]) -> dict[tuple[int, int], bytes]:
    """Read a shard's encoded frames, one open per chunk file and in file order."""
    by_chunk: dict[int, list[SampleRef]] = defaultdict(list)
    for sample in samples:
        by_chunk[sample.chunk].append(sample)
    payloads = {}
    for chunk, refs in sorted(by_chunk.items()):
        with open(chunk_path(work, chunk), "rb") as f:
            for ref in sorted(refs, key=lambda r: r.offset):
                f.seek(ref.offset)
                payloads[chunk, ref.offset] = f.read(ref.length)
    return payloads
