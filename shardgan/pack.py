"""`shardgan pack`: frames under SRC -> shuffled WebDataset shards + manifest in DST.

Two stages, so that parts, resume and determinism all fall out of one design:

1. encode (parallel, the expensive part): the sorted input list is cut into fixed
   chunks; a worker decodes, resizes, filters and encodes one chunk and writes the
   results to `DST/.work/chunk-NNNNNN.bin` atomically. A chunk file that exists is
   complete, so a rerun skips it (resume), and `--part i/N` encodes chunks i, i+N, ...
2. write (cheap, no decoding): drop blanks and exact duplicates (this selection runs in
   the main process as chunks complete in order, overlapping stage 1), shuffle globally
   with --seed, cut into shards, write them atomically, then the manifest last.

Output bytes depend only on the inputs and the pack options, never on the number
of workers, parts, or how often the pack was interrupted.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import struct
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .atomic import fsync_dir, publish, remove_stale_temps, temp_path, unpublished_write, write_bytes_atomic
from .errors import ConfigError, DataError, Interrupted
from .frames import MAX_UPSCALE, RESIZE_MODES, FrameSpec, is_blank, is_video, load_frames, scan, source_size
from .manifest import MANIFEST_NAME, Manifest, ShardInfo, SplitInfo, load_manifest
from .progress import ProgressLines
from .shards import CHROMA, IMAGE_FORMATS, Sample, encode_image, sample_bytes, sample_key, write_shard
from .stopwatch import Stopwatch

WORK_DIR = ".work"
WORKLIST_NAME = "plan.json"
"""The work list's file in DST/.work; named before the work list was, and kept so that an
unfinished pack of an earlier shardgan still resumes."""
WORKLIST_VERSION = 2
"""2: sha256 duplicate keys (1: blake2b); chunks of another version are never mixed in."""
MAX_CHUNK_INPUTS = 256
MIN_CHUNK_INPUTS = 8
TARGET_CHUNKS = 256
"""Chunks are small enough that a collection gives ~256 of them (load balance, resume
granularity) and never more than 256 inputs each; the layout depends on the input count only."""
SPLITS = ("train", "val")
_SHARD_NAME = re.compile(r"^(train|val)-\d{6}\.tar$")
ASPECT_TOLERANCE = 0.05
"""A stretch beyond 5 % of the frames' width/height ratio is pointed out (the packed frames look squashed)."""
MIN_SIDE, MAX_SIDE = 8, 4096
"""Stored frame sides: a DCGAN (models.choose_layout) needs 6 and SWD's 7x7 patches 7; a 4096x4096 RGB raw sample is 50 MB."""
_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass(frozen=True)
class PackOptions:
    """Everything that decides the packed bytes (and nothing that doesn't, like --workers)."""

    frame: FrameSpec
    """Size, channels, resize mode and video frame step of every stored frame."""
    image_format: str = "raw"
    quality: int = 95
    blank_threshold: float = 2.0
    """Frames whose pixel std (0-255 scale) is below this are blank; 0 keeps them."""
    seed: int = 0
    val: float = 0
    """>= 1: that many validation samples; in (0, 1): that fraction; 0: no val split."""
    samples_per_shard: int | None = None
    shard_size_bytes: int = 256 * 10**6
    chroma: str | None = None
    """jpg chroma subsampling (shards.CHROMA); None: by quality, as packs before --chroma had it."""

    def __post_init__(self) -> None:
        frame = self.frame
        checks = [
            (
                MIN_SIDE <= min(frame.width, frame.height) and max(frame.width, frame.height) <= MAX_SIDE,
                f"--size {frame.width}x{frame.height}: each side must be {MIN_SIDE}..{MAX_SIDE} (the smallest a DCGAN and SWD's 7x7 patches train and score on, the largest shardgan stores)",
            ),
            (frame.channels in (1, 3), f"--channels must be 1 or 3, got {frame.channels}"),
            (frame.mode in RESIZE_MODES, f"--mode must be one of {'|'.join(RESIZE_MODES)}, got {frame.mode!r}"),
            (self.image_format in IMAGE_FORMATS, f"--format must be one of {'|'.join(IMAGE_FORMATS)}, got {self.image_format!r}"),
            (1 <= self.quality <= 100, f"--quality must be in 1..100, got {self.quality}"),
            (self.chroma in (None, *CHROMA), f"--chroma must be one of {'|'.join(CHROMA)}, got {self.chroma!r}"),
            (frame.every >= 1, f"--every must be >= 1, got {frame.every}"),
            (self.blank_threshold >= 0, f"--blank-threshold must be >= 0, got {self.blank_threshold}"),
            (self.val >= 0 and (self.val < 1 or float(self.val).is_integer()), f"--val must be a count or a fraction in (0, 1), got {self.val}"),
            (self.samples_per_shard is None or self.samples_per_shard >= 1, f"--samples-per-shard must be >= 1, got {self.samples_per_shard}"),
            (self.shard_size_bytes >= 1, f"--shard-size must be positive, got {self.shard_size_bytes}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def args(self) -> dict[str, Any]:
        """All options as one flat dict: the manifest's `pack_args` (plus inputs_sha256). Flat, the
        frame's fields beside the others, as every manifest so far has them, so a rerun still
        finds an earlier pack of the same options complete."""
        args = asdict(self)
        if args["chroma"] is None:  # absent, as in the packs made before --chroma
            del args["chroma"]
        return {**args.pop("frame"), **args}

    def encode_args(self) -> dict[str, Any]:
        """The options a chunk's contents depend on (a new seed or shard size reuses the chunks)."""
        args = self.args()
        for name in ("seed", "val", "samples_per_shard", "shard_size_bytes"):
            del args[name]
        return args

    def num_val(self, num_samples: int) -> int:
        return int(self.val) if self.val >= 1 else round(self.val * num_samples)


def parse_size(text: str) -> tuple[int | None, int | None]:
    """'88x66' -> (88, 66); one side may be auto: '88xauto' -> (88, None), 'autox66' -> (None, 66),
    that side then follows the frames' aspect ratio (resolve_size)."""
    match = re.fullmatch(r"\s*(\d+|auto)\s*[xX]\s*(\d+|auto)\s*", text)
    sides = [None if side == "auto" else int(side) for side in match.groups()] if match else []
    if not sides or sides == [None, None] or min(s for s in sides if s is not None) < 1:
        raise ConfigError(f"--size must be WIDTHxHEIGHT with positive integers, e.g. 88x66, or one side auto (88xauto: the height from the frames' aspect ratio); got {text!r}")
    return sides[0], sides[1]


def resolve_size(src: Path, width: int | None, height: int | None) -> tuple[int, int]:
    """An auto side from the first readable input's aspect ratio (rounded to the nearest pixel)."""
    if width is not None and height is not None:
        return width, height
    _check_src(src)
    size = first_frame_size(src, scan(src)[0])
    if size is None:
        raise DataError(f"--size {width or 'auto'}x{height or 'auto'}: no readable frame in the first inputs of {src} to take the aspect ratio from; give both sides")
    w, h = size
    return (width, max(1, round(width * h / w))) if height is None else (max(1, round(height * w / h)), height)


def first_frame_size(src: Path, inputs: list[tuple[str, int]]) -> tuple[int, int] | None:
    """The size of the first of the first 16 inputs (scan order) whose header reads: the frames' aspect ratio."""
    return next((size for path, _ in inputs[:16] if (size := source_size(src / path)) is not None), None)


def aspect_note(source: tuple[int, int], frame: FrameSpec) -> str | None:
    """A line when --mode stretch changes the aspect ratio by more than ASPECT_TOLERANCE."""
    (w, h), change = source, (frame.width / frame.height) / (source[0] / source[1]) - 1
    if frame.mode != "stretch" or abs(change) <= ASPECT_TOLERANCE:
        return None
    kept = f"{frame.width}x{max(1, round(frame.width * h / w))}"
    return (
        f"note: --mode stretch changes the aspect ratio by {change:+.0%} ({w}x{h} frames to {frame.width}x{frame.height}); "
        f"--size {kept} (or {frame.width}xauto) keeps it, --mode crop or --mode pad keep the frames' proportions at this size"
    )


def parse_bytes(text: str) -> int:
    """'256MB', '1GiB', '1000000' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match[2].lower() if match else ""
    if not match or unit not in _BYTE_UNITS or float(match[1]) <= 0:
        raise ConfigError(f"--shard-size must be a size like 256MB, 1GiB or 1000000; got {text!r}")
    return int(float(match[1]) * _BYTE_UNITS[unit])


def parse_val(text: str) -> float:
    """'500' -> 500 samples, '0.05' -> 5 percent, '0' -> none: a number written with a point or an
    exponent is a fraction, which must lie in (0, 1) ('1.0' is refused, not read as one sample)."""
    usage = "--val must be a sample count (e.g. 500) or a fraction in (0, 1) (e.g. 0.05)"
    if re.fullmatch(r"\s*\d+\s*", text):
        return float(int(text))
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{usage}; got {text!r}") from None
    if not 0 < value < 1:
        raise ConfigError(f"{usage}; got {text!r}, a fraction {'of all samples' if value == 1 else 'outside (0, 1)'}")
    return value


def parse_part(text: str) -> tuple[int, int]:
    """'3/8' -> (3, 8): this job encodes chunks 3, 11, 19, ... of 8 parts."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ConfigError(f"--part must be I/N with 0 <= I < N, e.g. 0/4 (like $SLURM_ARRAY_TASK_ID/4); got {text!r}")
    return int(match[1]), int(match[2])


# -- the work list: the sorted inputs and how they are chunked, shared by all parts ----------------


@dataclass(frozen=True)
class WorkList:
    """The inputs (sorted, relative to SRC) and the encode options; identical for every part."""

    inputs: list[tuple[str, int]]
    """(path, size in bytes) per input file."""
    scan_skipped: list[tuple[str, str]]
    encode_args: dict[str, Any]

    @property
    def chunk_inputs(self) -> int:
        return min(MAX_CHUNK_INPUTS, max(MIN_CHUNK_INPUTS, math.ceil(len(self.inputs) / TARGET_CHUNKS)))

    def chunks(self) -> list[range]:
        """Input index ranges; a video gets a chunk of its own (it may hold thousands of frames)."""
        chunks: list[range] = []
        start = 0
        for index, (path, _) in enumerate(self.inputs):
            if index > start and (is_video(path) or index - start == self.chunk_inputs):
                chunks.append(range(start, index))
                start = index
            if is_video(path):
                chunks.append(range(index, index + 1))
                start = index + 1
        if start < len(self.inputs):
            chunks.append(range(start, len(self.inputs)))
        return chunks

    def to_bytes(self) -> bytes:
        doc = {"version": WORKLIST_VERSION, "encode": self.encode_args, "inputs": self.inputs, "scan_skipped": self.scan_skipped}
        return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


def list_work(src: Path, options: PackOptions) -> WorkList:
    inputs, skipped = scan(src)
    if not inputs:
        raise DataError(f"no image or video files under {src} (looked for .png .jpg .jpeg .bmp .webp .mp4 .mkv .avi .webm)")
    if options.val >= len(inputs) and not any(is_video(path) for path, _ in inputs):  # known before encoding anything
        raise DataError(f"--val {options.val:g} asks for {options.num_val(len(inputs))} validation samples but {src} holds only {len(inputs)} frames")
    return WorkList(inputs, [(s.path, s.reason) for s in skipped], options.encode_args())


# -- stage 1: encode chunks ----------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkTask:
    inputs: list[tuple[int, str]]
    """(input index, path relative to src)."""
    src: str
    path: str
    options: PackOptions


@dataclass(frozen=True)
class Kept:
    """A frame for the shards (unless an earlier one has its duplicate key): where its encoded
    bytes are in the chunk file."""

    input_index: int
    frame: int | None
    """The video frame number; None for a still image."""
    duplicate_key: str
    """Exact-duplicate key of the resized pixels."""
    offset: int
    length: int


@dataclass(frozen=True)
class Blank:
    """A frame the blank filter dropped."""

    input_index: int
    frame: int | None


@dataclass(frozen=True)
class Skipped:
    """An input, or the rest of a damaged video, that gave no frame."""

    input_index: int
    reason: str


Record = Kept | Blank | Skipped
"""One result of stage 1."""


def record_row(record: Record) -> list[Any]:
    """A record as its chunk file's footer stores it: [input_index, frame, status, detail, offset,
    length], the row chunk files have always held (so unfinished packs of earlier versions resume)."""
    match record:
        case Kept(index, frame, key, offset, length):
            return [index, frame, "ok", key, offset, length]
        case Blank(index, frame):
            return [index, frame, "blank", "", 0, 0]
        case Skipped(index, reason):
            return [index, None, "skip", reason, 0, 0]


def record_from_row(row: list[Any]) -> Record:
    index, frame, status, detail, offset, length = row
    if status == "ok":
        return Kept(index, frame, detail, offset, length)
    return Blank(index, frame) if status == "blank" else Skipped(index, detail)


def chunk_path(work: Path, index: int) -> Path:
    return work / f"chunk-{index:06d}.bin"


@dataclass(frozen=True)
class ChunkResult:
    """A worker's answer: the chunk's records (stage 2 needs no read-back), its seconds per stage,
    and the chunk file's temp name, which the main process publishes."""

    records: list[Record]
    seconds: dict[str, float]
    temp: str

    @property
    def frames(self) -> int:
        return sum(not isinstance(r, Skipped) for r in self.records)


def duplicate_key(pixels: np.ndarray) -> str:
    """Exact-duplicate key of resized pixels: 128 bits of sha256 (faster than blake2b where CPUs have SHA extensions)."""
    return hashlib.sha256(pixels.tobytes()).hexdigest()[:32]


def encode_chunk(task: ChunkTask) -> ChunkResult:
    """Encode one chunk's inputs into its chunk file: payloads, then a JSON footer and its length.

    The file is left under its temp name: the main process fsyncs and renames it, so that no
    worker waits for the disk.
    """
    clock = Stopwatch()
    records: list[Record] = []
    with unpublished_write(task.path) as f:
        for input_index, rel in task.inputs:
            for item in load_frames(Path(task.src) / rel, task.options.frame, clock):
                if isinstance(item, str):
                    records.append(Skipped(input_index, item))
                    continue
                if is_blank(item.pixels, task.options.blank_threshold):
                    records.append(Blank(input_index, item.index))
                    clock.lap("filter")
                    continue
                key = duplicate_key(item.pixels)
                clock.lap("filter")
                data = encode_image(item.pixels, task.options.image_format, task.options.quality, task.options.chroma)
                clock.lap("encode")
                records.append(Kept(input_index, item.index, key, f.tell(), len(data)))
                f.write(data)
                clock.lap("chunk write")
        footer = json.dumps([record_row(r) for r in records], separators=(",", ":")).encode()
        f.write(footer + struct.pack("<Q", len(footer)))
    clock.lap("chunk write")
    return ChunkResult(records, dict(clock.seconds), str(temp_path(task.path)))


def read_chunk_records(path: Path) -> list[Record]:
    with open(path, "rb") as f:
        f.seek(-8, os.SEEK_END)
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(-8 - length, os.SEEK_END)
        return [record_from_row(row) for row in json.loads(f.read(length))]


# -- stage 2: filter, shuffle, cut, write --------------------------------------------------------


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
    skipped: list[dict[str, str]] = field(default_factory=list)


def select_samples(work_list: WorkList, records: Iterable[tuple[int, list[Record]]]) -> Selection:
    """Blank frames and exact duplicates (after resizing) are dropped; the first in input order wins.

    `records` are (chunk index, its records) in chunk order.
    """
    selection = Selection(skipped=[{"path": p, "reason": r} for p, r in work_list.scan_skipped])
    seen: set[str] = set()
    for index, chunk_records in records:
        for record in chunk_records:
            src = work_list.inputs[record.input_index][0]
            match record:
                case Skipped():
                    selection.skipped.append({"path": src, "reason": record.reason})
                case Blank():
                    selection.filtered["blank"] += 1
                case Kept() if record.duplicate_key in seen:
                    selection.filtered["duplicate"] += 1
                case Kept():
                    seen.add(record.duplicate_key)
                    meta = {"src": src} if record.frame is None else {"src": src, "frame": record.frame}
                    key = sample_key(record.input_index, record.frame)
                    selection.kept.append(SampleRef(index, record.offset, record.length, key, meta))
    selection.skipped.sort(key=lambda s: (s["path"], s["reason"]))
    return selection


def split_and_cut(kept: list[SampleRef], options: PackOptions) -> dict[str, list[list[SampleRef]]]:
    """Seeded global shuffle, the first num_val go to val, then each split is cut into shards."""
    num_val = options.num_val(len(kept))
    if num_val >= len(kept):
        raise DataError(f"--val {options.val:g} asks for {num_val} validation samples but only {len(kept)} frames were kept")
    order = np.random.default_rng(options.seed).permutation(len(kept))
    shuffled = [kept[i] for i in order]
    return {"train": _cut(shuffled[num_val:], options), "val": _cut(shuffled[:num_val], options)}


def _cut(samples: list[SampleRef], options: PackOptions) -> list[list[SampleRef]]:
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
    dst = Path(task.dst)
    marker = dst / WORK_DIR / "shards" / f"{task.name}.json"
    identity = task.identity()
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        done = json.loads(marker.read_text())
        info = ShardInfo(**done["shard"])
        if done["identity"] == identity and (dst / task.name).stat().st_size == info.num_bytes:
            return info
    payloads = _read_payloads(dst / WORK_DIR, task.samples)
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


# -- orchestration -------------------------------------------------------------------------------


class Outcome(Enum):
    """What a `pack_dataset` call did."""

    PACKED = "packed"
    """Shards and manifest written (both stages, or the write stage after --part runs)."""
    ALREADY_PACKED = "already packed"
    """DST already held this exact pack: nothing done."""
    PART_ENCODED = "part encoded"
    """--part: this part's chunks encoded; no shards yet."""


@dataclass
class PackSummary:
    """What a pack did, for the closing report (and for tests and the benchmark)."""

    outcome: Outcome = Outcome.PACKED
    dst: Path = Path(".")
    part: tuple[int, int] | None = None
    """--part I/N of a PART_ENCODED pack."""
    chunks: tuple[int, int] = (0, 0)
    """Chunks this run covered, of all the work list's (PART_ENCODED)."""
    inputs: int = 0
    frames_encoded: int = 0
    packed: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    shards: int = 0
    num_bytes: int = 0
    seconds: float = 0.0
    stage_seconds: Counter = field(default_factory=Counter)
    """Main-process wall time of "scan", "start-up", "encode stage", "write stage", "clean-up", plus
    the workers' "decode", "resize", "filter", "encode" and "chunk write" seconds, summed over workers."""

    def add_manifest(self, manifest: Manifest) -> None:
        self.packed = {name: split.num_samples for name, split in manifest.splits.items()}
        self.filtered = manifest.filtered
        self.skipped = Counter(_reason_kind(s["reason"]) for s in manifest.skipped)
        self.shards = sum(len(split.shards) for split in manifest.splits.values())
        self.num_bytes = sum(split.num_bytes for split in manifest.splits.values())

    def lines(self) -> list[str]:
        if self.outcome is Outcome.ALREADY_PACKED:
            return [f"{self.dst} is already packed with these inputs and options; nothing to do"]
        if self.outcome is Outcome.PART_ENCODED:
            (i, n), (mine, total) = self.part, self.chunks
            return [f"part {i}/{n}: {mine} of {total} chunks encoded in {self.seconds:.1f}s; run with --merge once all parts are done"]
        packed = ", ".join(f"{n} {split}" for split, n in self.packed.items() if n) or "nothing"
        lines = [
            f"packed {packed} from {self.inputs} inputs in {self.seconds:.1f}s "
            f"({self.frames_encoded / max(self.seconds, 1e-9):.0f} frames/s encoded)",
            f"dropped: {self.filtered.get('blank', 0)} blank, {self.filtered.get('duplicate', 0)} duplicate",
            f"wrote {self.shards} shards, {self.num_bytes / 1e6:.1f} MB",
        ]
        if self.skipped:
            lines.append("skipped: " + ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common()))
        return lines


def pack_dataset(
    src: str | Path,
    dst: str | Path,
    options: PackOptions,
    *,
    workers: int | None = None,
    part: tuple[int, int] | None = None,
    merge: bool = False,
    overwrite: bool = False,
    keep_work: bool = False,
    progress_every_s: float = 60.0,
    log: Callable[[str], None] = print,
) -> PackSummary:
    """Pack SRC into DST (both stages), only encode a part (`part`), or only write (`merge`)."""
    started = time.monotonic()
    clock = Stopwatch()
    src, dst = Path(src), Path(dst)
    _check_locations(src, dst, part, merge, overwrite)
    work_list = list_work(src, options)
    clock.lap("scan")
    pack_args = {**options.args(), "inputs_sha256": work_list.fingerprint()}
    with _write_errors(dst), _interrupt_keeps_work(dst):
        if overwrite:
            clear_dataset(dst)
        elif (done := _finished_pack(dst, pack_args)) is not None:
            if not keep_work:  # a kill between manifest and clean-up left it
                shutil.rmtree(dst / WORK_DIR, ignore_errors=True)
            log(done.lines()[0])
            return done
        if not merge and (size := first_frame_size(src, work_list.inputs)) and (note := aspect_note(size, options.frame)):
            log(note)
        work = _open_work_dir(dst, work_list, exclusive=part is None)
        summary = PackSummary(dst=dst, inputs=len(work_list.inputs) + len(work_list.scan_skipped))
        chunks = work_list.chunks()
        mine = range(len(chunks)) if part is None else range(part[0], len(chunks), part[1])
        if merge:
            _require_chunks(work, len(chunks))
        with _worker_pool(min(workers or _available_cores(), len(mine) or 1)) as pool:
            clock.lap("start-up")
            lines_every_s = 0 if sys.stderr.isatty() else progress_every_s  # on a terminal, tqdm's bar
            records = _chunk_records(src, work, work_list, options, list(mine), pool, summary, ProgressLines("encode", None, "frame", lines_every_s, log))
            if part is not None:
                deque(records, maxlen=0)  # encode only
                clock.lap("encode stage")
            else:
                selection = select_samples(work_list, records)
                clock.lap("encode stage")
                manifest = _write_dataset(dst, work_list, options, pack_args, selection, pool)
                clock.lap("write stage")
        if part is None:
            if not keep_work:
                shutil.rmtree(work, ignore_errors=True)
            _remove_stale_shards(dst, manifest)
        clock.lap("clean-up")
    summary.seconds = time.monotonic() - started
    summary.stage_seconds.update(clock.seconds)
    if part is not None:
        summary.outcome, summary.part, summary.chunks = Outcome.PART_ENCODED, part, (len(mine), len(chunks))
    else:
        summary.add_manifest(manifest)
    for line in summary.lines():
        log(line)
    return summary


@contextlib.contextmanager
def _interrupt_keeps_work(dst: Path) -> Iterator[None]:
    """Ctrl-C: one line saying what is kept; encoded chunks are complete files, so a rerun goes on."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: the frames encoded so far are kept in {dst / WORK_DIR}; run the same command again to go on") from None


@contextlib.contextmanager
def _write_errors(dst: Path) -> Iterator[None]:
    """Disk full, read-only or unwritable DST: one line, and what was finished stays for the rerun."""
    try:
        yield
    except OSError as e:
        where = e.filename or dst
        raise DataError(f"pack stopped writing to {where}: {e.strerror or e}; fix that and rerun the same command (finished work is kept)") from None


def _check_src(src: Path) -> None:
    if not src.is_dir():
        raise DataError(f"SRC {src} is not a directory" if src.exists() else f"SRC {src} does not exist")


def _check_locations(src: Path, dst: Path, part: tuple[int, int] | None, merge: bool, overwrite: bool) -> None:
    _check_src(src)
    real_src, real_dst = src.resolve(), dst.resolve()
    if real_dst == real_src or real_src in real_dst.parents:
        raise ConfigError(f"DST {dst} is inside SRC {src}; put the shards somewhere else")
    if dst.exists() and not dst.is_dir():
        raise DataError(f"DST {dst} exists and is not a directory")
    if part is not None and (merge or overwrite):
        raise ConfigError("--part cannot be combined with --merge or --overwrite (parts share DST)")


def _finished_pack(dst: Path, pack_args: dict[str, Any]) -> PackSummary | None:
    """A summary if DST already holds this exact pack; an error if it holds a different dataset."""
    if not (dst / MANIFEST_NAME).exists():
        return None
    try:
        manifest = load_manifest(dst)
    except DataError as e:
        raise DataError(f"DST {dst} holds an unreadable dataset ({e}); add --overwrite to replace it") from None
    if manifest.pack_args != pack_args:
        changed = sorted(k for k in pack_args.keys() | manifest.pack_args.keys() if manifest.pack_args.get(k) != pack_args.get(k))
        raise DataError(f"DST {dst} already holds a different dataset (differs in: {', '.join(changed)}); add --overwrite to replace it")
    return PackSummary(Outcome.ALREADY_PACKED, dst)


def clear_dataset(dst: Path) -> None:
    """Remove what a pack writes (manifest first, so a half-cleared DST never looks complete)."""
    (dst / MANIFEST_NAME).unlink(missing_ok=True)
    for path in dst.glob("*.tar") if dst.is_dir() else []:
        if _SHARD_NAME.match(path.name):
            path.unlink()
    shutil.rmtree(dst / WORK_DIR, ignore_errors=True)


def _open_work_dir(dst: Path, work_list: WorkList, exclusive: bool) -> Path:
    """Create DST/.work with the work list, or check that the one there is this one (resume, parts)."""
    work = dst / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    listed = work_list.to_bytes()
    path = work / WORKLIST_NAME
    if path.exists() and path.read_bytes() != listed:
        raise DataError(
            f"{work} holds an unfinished pack of different inputs or options; rerun that pack to finish it, or add --overwrite"
        )
    if exclusive:  # parts may run concurrently: never delete another writer's temp file
        remove_stale_temps(dst)
        remove_stale_temps(work)
        if (work / "shards").is_dir():
            remove_stale_temps(work / "shards")
    if not path.exists():
        write_bytes_atomic(path, listed)
    return work


def _chunk_records(
    src: Path, work: Path, work_list: WorkList, options: PackOptions, chunk_ids: list[int], pool: Any, summary: PackSummary, lines: ProgressLines
) -> Iterator[tuple[int, list[Record]]]:
    """(chunk index, records) in chunk order, each as soon as it is done: encoded now (in the pool)
    if its file is missing, else read back. Encoded frames and worker seconds go to `summary`;
    the bar (a terminal) or `lines` (a job log; its total set here) show the progress."""
    chunks = work_list.chunks()
    todo = {i for i in chunk_ids if not chunk_path(work, i).exists()}
    tasks = [ChunkTask([(j, work_list.inputs[j][0]) for j in chunks[i]], str(src), str(chunk_path(work, i)), options) for i in chunk_ids if i in todo]
    has_video = any(is_video(work_list.inputs[t.inputs[0][0]][0]) for t in tasks)
    # Videos have unknown frame counts: then the bar counts frames without a total.
    total = None if has_video else sum(len(t.inputs) for t in tasks)
    results = zip(tasks, _map(pool, encode_chunk, tasks))
    bar = tqdm(total=total, unit="frame", desc="encode", dynamic_ncols=True, smoothing=0.1, disable=None if tasks else True)  # None: off a terminal
    lines.total = total
    # One thread fsyncs and renames finished chunks in order while the encoding goes on.
    with bar, ThreadPoolExecutor(1) as publisher:
        published = []
        for i in chunk_ids:
            if i not in todo:
                yield i, read_chunk_records(chunk_path(work, i))
                continue
            task, result = next(results)
            published.append(publisher.submit(publish, result.temp, task.path))
            summary.frames_encoded += result.frames
            summary.stage_seconds.update(result.seconds)
            bar.update(result.frames if has_video else len(task.inputs))
            lines.update(result.frames if has_video else len(task.inputs))
            yield i, result.records
        for future in published:
            future.result()
    if tasks:
        fsync_dir(work)  # all the chunk renames at once


def _require_chunks(work: Path, num_chunks: int) -> None:
    missing = [i for i in range(num_chunks) if not chunk_path(work, i).exists()]
    if missing:
        listed = ", ".join(chunk_path(work, i).name for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"{work} is missing {len(missing)} of {num_chunks} chunks ({listed}); finish the --part runs, or run without --merge to encode them here"
        )


def _write_dataset(dst: Path, work_list: WorkList, options: PackOptions, pack_args: dict[str, Any], selection: Selection, pool: Any) -> Manifest:
    """Stage 2 after the selection: shuffle, cut, write shards (reusing finished ones), manifest last."""
    if not selection.kept:
        reasons = Counter(_reason_kind(s["reason"]) for s in selection.skipped)
        skipped = ", ".join(f"{n} {why}" for why, n in reasons.most_common()) or "none"
        frame = options.frame
        hint = f"; --size {frame.width}x{frame.height} would upscale them more than {MAX_UPSCALE}x: pick a smaller --size" if "too small" in reasons else ""
        shutil.rmtree(dst / WORK_DIR, ignore_errors=True)  # nothing in it is worth a rerun
        with contextlib.suppress(OSError):
            dst.rmdir()  # only if empty: pack made it
        raise DataError(
            f"no usable frame among {len(work_list.inputs) + len(work_list.scan_skipped)} inputs (skipped: {skipped}; "
            f"dropped: {selection.filtered['blank']} blank, {selection.filtered['duplicate']} duplicate){hint}"
        )
    fingerprint = work_list.fingerprint()
    tasks = [
        ShardTask(f"{split}-{i:06d}.tar", samples, str(dst), options.image_format, fingerprint)
        for split, shards in split_and_cut(selection.kept, options).items()
        for i, samples in enumerate(shards)
    ]
    infos = list(tqdm(_map(pool, write_shard_task, tasks), total=len(tasks), unit="shard", desc="write", dynamic_ncols=True, disable=None))
    splits = {split: SplitInfo([info for info in infos if info.name.startswith(f"{split}-")]) for split in SPLITS}
    manifest = Manifest(
        width=options.frame.width,
        height=options.frame.height,
        channels=options.frame.channels,
        image_format=options.image_format,
        splits=splits,
        pack_args=pack_args,
        num_inputs=len(work_list.inputs) + len(work_list.scan_skipped),
        filtered=selection.filtered,
        skipped=selection.skipped,
        root=dst,
    )
    manifest.write(dst)
    return manifest


def _remove_stale_shards(dst: Path, manifest: Manifest) -> None:
    """Shard files a previous, different pack left behind under our naming scheme."""
    listed = {s.name for split in manifest.splits.values() for s in split.shards}
    for path in dst.glob("*.tar"):
        if _SHARD_NAME.match(path.name) and path.name not in listed:
            path.unlink()


def _reason_kind(reason: str) -> str:
    """'corrupt: OSError: ...' -> 'corrupt', for the summary's counts by kind."""
    return reason.split(":", 1)[0]


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def _worker_pool(num_workers: int) -> Iterator[Any]:
    """A process pool for > 1 worker (None = run in this process, no pickling overhead)."""
    if num_workers <= 1:
        yield None
        return
    pool = multiprocessing.get_context().Pool(num_workers, initializer=_die_with_parent)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()  # workers exit on their own: much faster than terminate() for many workers
    finally:
        pool.join()


def _map(pool: Any, fn: Callable, tasks: list) -> Iterable:
    """Results in task order, computed in the pool if there is one."""
    return map(fn, tasks) if pool is None else pool.imap(fn, tasks)


def _die_with_parent() -> None:
    """Workers exit when the pack process dies (even by kill -9) instead of writing on unseen,
    and leave Ctrl-C to it (no traceback from every worker; it terminates them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # parent already gone before prctl took effect
            os._exit(1)
