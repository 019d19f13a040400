"""The on-disk sample format shared by pack (writes) and loader (reads).

A shard is a plain USTAR tar that `tar tf` and `webdataset.WebDataset` read:
each sample is two consecutive members, `<key>.json` (source path, frame) then
`<key>.<ext>` (the image, exactly H x W x C). Keys are digits and underscores only,
so webdataset's "key = name before the first dot" rule always holds.
Tar headers carry fixed mtime/owner/mode, so the same samples give the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from .atomic import atomic_write
from .manifest import ShardInfo

IMAGE_FORMATS = ("png", "jpg", "webp", "raw")
EXTENSIONS = {"png": "png", "jpg": "jpg", "webp": "webp", "raw": "npy"}
META_EXT = "json"
TAR_BLOCK = 512


@dataclass(frozen=True)
class Sample:
    """One packed frame: its key, encoded image bytes and metadata."""

    key: str
    image: bytes
    meta: dict


def sample_key(input_index: int, frame: int | None = None) -> str:
    """Key from the input's position in the sorted scan (and the frame number for videos)."""
    return f"{input_index:09d}" if frame is None else f"{input_index:09d}_{frame:07d}"


def encode_image(pixels: np.ndarray, image_format: str, quality: int = 95) -> bytes:
    """(H, W, C) uint8 -> stored bytes. Deterministic for a given Pillow/numpy version."""
    if image_format == "raw":
        return _npy_header(pixels.shape) + pixels.tobytes()
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    buf = io.BytesIO()
    if image_format == "png":
        image.save(buf, format="PNG", compress_level=6)
    elif image_format == "jpg":
        image.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    elif image_format == "webp":
        image.save(buf, format="WEBP", quality=quality, lossless=quality >= 100, method=4)
    else:
        raise ValueError(f"unknown image format {image_format!r}")
    return buf.getvalue()


@functools.lru_cache(maxsize=16)
def _npy_header(shape: tuple[int, ...]) -> bytes:
    """np.save's header for a uint8 array of this shape: the same bytes as np.save, 10x faster per frame."""
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, np.uint8), allow_pickle=False)
    return buf.getvalue()[: -math.prod(shape)]


def decode_image(data: bytes, image_format: str, height: int, width: int, channels: int) -> np.ndarray:
    """Stored bytes -> (H, W, C) uint8; raises ValueError if the bytes are not that image.

    raw is a view of the .npy payload (no decode); PNG/JPEG/WebP go through Pillow.
    torchvision.io.decode_png is ~25% faster at 88x66 but deprecated in 0.29 and it
    segfaults on corrupt PNG data ("bad adaptive filter value"), which must be skippable.
    """
    if image_format == "raw":
        size = height * width * channels
        if len(data) < size:
            raise ValueError(f"raw sample has {len(data)} bytes, needs {size}")
        # .npy = header + C-order payload; the payload is the last H*W*C bytes.
        return np.frombuffer(data, dtype=np.uint8, offset=len(data) - size).reshape(height, width, channels)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            pixels = np.asarray(image)
    except Exception as e:  # Pillow raises many types for bad bytes
        raise ValueError(f"cannot decode {image_format}: {e}") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape != (height, width, channels):
        raise ValueError(f"decoded shape {pixels.shape}, expected {(height, width, channels)}")
    return pixels


def decode_sample(members: dict[str, bytes], image_format: str, height: int, width: int, channels: int) -> np.ndarray:
    """A sample's image member (the one with `image_format`'s extension), decoded to (H, W, C) uint8;
    ValueError if it is missing or not that image."""
    ext = EXTENSIONS[image_format]
    if ext not in members:
        raise ValueError(f"no .{ext} member")
    return decode_image(members[ext], image_format, height, width, channels)


def write_shard(path: str | Path, samples: Iterable[Sample], image_format: str) -> ShardInfo:
    """Write samples to a tar at `path` atomically; return its manifest entry (with offsets).

    The bytes are exactly those of webdataset's TarWriter (Python's tarfile, stream mode), but
    written in one pass that also yields the offsets and sha256: no second read of the shard.
    """
    path = Path(path)
    ext = EXTENSIONS[image_format]
    digest = hashlib.sha256()
    offsets: list[int] = []
    end = 0
    with atomic_write(path) as f:
        for sample in samples:
            members = sorted([(META_EXT, _meta_bytes(sample.meta)), (ext, sample.image)])  # TarWriter's order: by extension
            block = b"".join(_member(f"{sample.key}.{name}", data) for name, data in members)
            offsets.append(end)
            end += len(block)
            digest.update(block)
            f.write(block)
        # tarfile's close: two zero blocks, then zeros up to a whole 10240-byte record.
        closing = bytes(2 * TAR_BLOCK + (-(end + 2 * TAR_BLOCK)) % tarfile.RECORDSIZE)
        digest.update(closing)
        f.write(closing)
    return ShardInfo(path.name, len(offsets), end + len(closing), digest.hexdigest(), offsets + [end])


def sample_bytes(meta: dict, image_bytes: int) -> int:
    """Bytes a sample takes in a shard (its two member headers and padded data), known before
    writing it: pack cuts shards by size with it."""
    return 2 * TAR_BLOCK + _padded(len(_meta_bytes(meta))) + _padded(image_bytes)


def _meta_bytes(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True).encode()


def _header_template() -> bytes:
    """tarfile's header for our members (mode, owner, mtime fixed); only name, size, checksum vary."""
    info = tarfile.TarInfo("x")
    info.mtime, info.mode, info.uname, info.gname = 0, 0o444, "shardgan", "shardgan"
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


_HEADER = _header_template()


def _member(name: str, data: bytes) -> bytes:
    """One tar member: header, data, zero padding to the block size (as tarfile writes it)."""
    encoded = name.encode()
    assert len(encoded) < 100 and len(data) < 8**11, "keys are short and frames small: no pax header needed"
    header = bytearray(_HEADER)
    header[:100] = encoded.ljust(100, b"\0")
    header[124:136] = b"%011o\0" % len(data)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + bytes(_padded(len(data)) - len(data))


def _padded(size: int) -> int:
    """`size` rounded up to whole tar blocks: what a member's data takes in the archive."""
    return (size + TAR_BLOCK - 1) // TAR_BLOCK * TAR_BLOCK


def parse_header(header: bytes) -> tuple[str, int]:
    """(name, size) of the plain-file USTAR header write_shard writes; ValueError otherwise.

    5x faster than tarfile.TarInfo.frombuf, which parses every field: this runs once per
    member read by the loader. The checksum still catches a corrupt header.
    """
    try:
        checksum = int(header[148:156].split(b"\0", 1)[0].strip(), 8)
        size = int(header[124:136].split(b"\0", 1)[0].strip(), 8)
    except ValueError:
        raise ValueError("bad tar header (size or checksum field is not a number)") from None
    if checksum != sum(header[:148]) + sum(header[156:]) + 8 * 32:  # the checksum field counts as spaces
        raise ValueError("bad tar header checksum")
    if header[156:157] not in (b"0", b"\0"):
        raise ValueError(f"tar member type {header[156:157]!r} is not a regular file")
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if header[257:263] == b"ustar\0" and header[345] != 0:  # POSIX long names: prefix + "/" + name
        name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape") + "/" + name
    return name, size


def parse_members(blob: bytes) -> dict[str, bytes]:
    """Parse the tar members of one sample's byte range into {"__key__": key, ext: bytes}.

    Used with a pread of [offsets[i], offsets[i+1]): no tar stream, no skipped samples read.
    """
    out: dict[str, bytes] = {}
    pos = 0
    while pos + TAR_BLOCK <= len(blob):
        header = blob[pos : pos + TAR_BLOCK]
        if header.count(0) == TAR_BLOCK:
            break
        name, size = parse_header(header)
        key, _, ext = name.partition(".")
        data_start = pos + TAR_BLOCK
        data = blob[data_start : data_start + size]
        if len(data) != size:
            raise ValueError(f"member {name} truncated ({len(data)} of {size} bytes)")
        out["__key__"] = key
        out[ext] = data
        pos = data_start + _padded(size)
    if "__key__" not in out:
        raise ValueError("no tar member in sample range")
    return out


def read_sample(f: BinaryIO, start: int, end: int) -> dict[str, bytes]:
    start, end = int(start), int(end)  # manifest offsets are numpy integers
    f.seek(start)
    blob = f.read(end - start)
    if len(blob) != end - start:
        raise ValueError(f"shard ends at byte {start + len(blob)}, sample needs up to {end}")
    try:
        return parse_members(blob)
    except ValueError as e:
        raise ValueError(f"at byte {start}: {e}") from None
