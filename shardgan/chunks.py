"""Pack's stage 1: the work list (the sorted inputs, cut into chunks) and the encoding of a chunk.

A worker decodes, resizes, filters and encodes one chunk's inputs into one chunk file: the
encoded frames, then a footer of one record per frame (kept, blank) or unusable input (a Skip).
The chunk's contents depend only on its inputs and the `EncodeOptions`, so a chunk encoded by any
part, worker or earlier, interrupted run is the same file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import temp_path, unpublished_write
from .errors import ConfigError, DataError
from .frames import RESIZE_MODES, FrameSpec, Skip, is_blank, is_video, load_frames, scan
from .shards import CHROMA, IMAGE_FORMATS, encode_image
from .stopwatch import Stopwatch

WORKLIST_VERSION = 2
"""2: sha256 duplicate keys (1: blake2b); chunks of another version are never mixed in."""
MAX_CHUNK_INPUTS = 256
MIN_CHUNK_INPUTS = 8
TARGET_CHUNKS = 256
"""Chunks are small enough that a collection gives ~256 of them (load balance, resume
granularity) and never more than 256 inputs each; the layout depends on the input count only."""
MIN_SIDE, MAX_SIDE = 8, 4096
"""Stored frame sides: a DCGAN (models.choose_layout) needs 6 and SWD's 7x7 patches 7; a 4096x4096 RGB raw sample is 50 MB."""


@dataclass(frozen=True)
class EncodeOptions:
    """Everything a chunk's bytes depend on (a new seed or shard size reuses the chunks)."""

    frame: FrameSpec
    """Size, channels, resize mode and video frame step of every stored frame."""
    image_format: str = "raw"
    quality: int = 95
    blank_threshold: float = 2.0
    """Frames whose pixel std (0-255 scale) is below this are blank; 0 keeps them."""
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
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def args(self) -> dict[str, Any]:
        """The options as one flat dict, the frame's fields beside the others (as the work list and
        every manifest's `pack_args` have always held them; no chroma key when it is None)."""
        args = asdict(self)
        if args["chroma"] is None:  # absent, as in the packs made before --chroma
            del args["chroma"]
        return {**args.pop("frame"), **args}


# -- the work list: the sorted inputs and how they are chunked, shared by all parts ----------------


@dataclass(frozen=True)
class WorkList:
    """The inputs (sorted, relative to SRC) and the encode options; identical for every part."""

    inputs: list[tuple[str, int]]
    """(path, size in bytes) per input file."""
    scan_skipped: list[Skip]
    encode_args: dict[str, Any]

    @property
    def num_inputs(self) -> int:
        """Every input file the scan found, usable or not."""
        return len(self.inputs) + len(self.scan_skipped)

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
        skipped = [[s.path, s.reason] for s in self.scan_skipped]
        doc = {"version": WORKLIST_VERSION, "encode": self.encode_args, "inputs": self.inputs, "scan_skipped": skipped}
        return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


def list_work(src: Path, options: EncodeOptions) -> WorkList:
    inputs, skipped = scan(src)
    if not inputs:
        raise DataError(f"no image or video files under {src} (looked for .png .jpg .jpeg .bmp .webp .mp4 .mkv .avi .webm)")
    return WorkList(inputs, skipped, options.args())


# -- a chunk: its task, its records, its file ----------------------------------------------------


@dataclass(frozen=True)
class ChunkTask:
    inputs: list[tuple[int, str]]
    """(input index, path relative to src)."""
    src: str
    path: str
    options: EncodeOptions


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


Record = Kept | Blank | Skip
"""One result of stage 1; a Skip is an input, or the rest of a damaged video, that gave no frame."""


def record_row(record: Record, index_of: Mapping[str, int]) -> list[Any]:
    """A record as its chunk file's footer stores it: [input_index, frame, status, detail, offset,
    length], the row chunk files have always held (so unfinished packs of earlier versions resume).
    `index_of` maps a Skip's path to its input's index."""
    match record:
        case Kept(index, frame, key, offset, length):
            return [index, frame, "ok", key, offset, length]
        case Blank(index, frame):
            return [index, frame, "blank", "", 0, 0]
        case Skip(path, reason):
            return [index_of[path], None, "skip", reason, 0, 0]


def record_from_row(row: list[Any], paths: Sequence[str]) -> Record:
    """The record of a footer row; `paths` are the work list's input paths by index."""
    index, frame, status, detail, offset, length = row
    if status == "ok":
        return Kept(index, frame, detail, offset, length)
    return Blank(index, frame) if status == "blank" else Skip(paths[index], detail)


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
        return sum(not isinstance(r, Skip) for r in self.records)


def duplicate_key(pixels: np.ndarray) -> str:
    """Exact-duplicate key of resized pixels: 128 bits of sha256 (faster than blake2b where CPUs have SHA extensions)."""
    return hashlib.sha256(pixels.tobytes()).hexdigest()[:32]


def encode_chunk(task: ChunkTask) -> ChunkResult:
    """Encode one chunk's inputs into its chunk file: payloads, then a JSON footer and its length.

    The file is left under its temp name: the main process fsyncs and renames it, so that no
    worker waits for the disk.
    """
    clock = Stopwatch()
    options = task.options
    records: list[Record] = []
    with unpublished_write(task.path) as f:
        for input_index, rel in task.inputs:
            for item in load_frames(Path(task.src), rel, options.frame, clock):
                if isinstance(item, Skip):
                    records.append(item)
                    continue
                if is_blank(item.pixels, options.blank_threshold):
                    records.append(Blank(input_index, item.index))
                    clock.lap("filter")
                    continue
                key = duplicate_key(item.pixels)
                clock.lap("filter")
                data = encode_image(item.pixels, options.image_format, options.quality, options.chroma)
                clock.lap("encode")
                records.append(Kept(input_index, item.index, key, f.tell(), len(data)))
                f.write(data)
                clock.lap("chunk write")
        index_of = {rel: index for index, rel in task.inputs}
        footer = json.dumps([record_row(r, index_of) for r in records], separators=(",", ":")).encode()
        f.write(footer + struct.pack("<Q", len(footer)))
    clock.lap("chunk write")
    return ChunkResult(records, dict(clock.seconds), str(temp_path(task.path)))


def read_chunk_records(path: Path, paths: Sequence[str]) -> list[Record]:
    """A chunk file's records, read back from its footer; `paths` as for record_from_row."""
    with open(path, "rb") as f:
        f.seek(-8, os.SEEK_END)
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(-8 - length, os.SEEK_END)
        return [record_from_row(row, paths) for row in json.loads(f.read(length))]
