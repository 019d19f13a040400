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
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import simplejpeg
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


CHROMA = ("444", "420")
"""JPEG chroma subsampling: full colour resolution, or half in each direction (what OpenCV and
so FFCV write): 4:2:0 decodes ~1.4x faster and blurs the colour of one-pixel sprite edges."""


def encode_image(pixels: np.ndarray, image_format: str, quality: int = 95, chroma: str | None = None) -> bytes:
    """(H, W, C) uint8 -> stored bytes. Deterministic for a given Pillow/numpy version.
    jpg's chroma subsampling is `chroma`, or by default 4:4:4 at quality >= 90, else 4:2:0."""
    if image_format == "raw":
        return _npy_header(pixels.shape) + pixels.tobytes()
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    buf = io.BytesIO()
    if image_format == "png":
        image.save(buf, format="PNG", compress_level=6)
    elif image_format == "jpg":
        full = chroma == "444" if chroma else quality >= 90
        image.save(buf, format="JPEG", quality=quality, subsampling=0 if full else 2)
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


def decode_image(data: bytes | memoryview, image_format: str, height: int, width: int, channels: int, out: np.ndarray | None = None) -> np.ndarray:
    """Stored bytes -> (H, W, C) uint8, written into `out` when given; raises ValueError if the
    bytes are not that image.

    raw is a view of the .npy payload (no decode). JPEG goes through simplejpeg (libjpeg-turbo,
    the same bits as Pillow's, 2-4x faster at 88x66, straight into `out`, and it releases the
    GIL, so the loader's threads decode in parallel); PNG and WebP through Pillow, whose
    decoders release the GIL too. torchvision.io.decode_png is no faster on threads and
    segfaults on corrupt PNG data ("bad adaptive filter value"), which must be skippable.
    """
    shape = (height, width, channels)
    if image_format == "raw":
        size = height * width * channels
        if len(data) < size:
            raise ValueError(f"raw sample has {len(data)} bytes, needs {size}")
        # .npy = header + C-order payload; the payload is the last H*W*C bytes.
        pixels = np.frombuffer(data, dtype=np.uint8, offset=len(data) - size).reshape(shape)
    elif image_format == "jpg":
        target = np.empty(shape, np.uint8) if out is None else out
        try:
            pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB", buffer=target)
        except Exception as e:  # simplejpeg raises ValueError, and others for odd streams
            raise ValueError(f"cannot decode jpg: {e}") from None
        if pixels.shape != shape:
            raise ValueError(f"decoded shape {pixels.shape}, expected {shape}")
        return pixels
    else:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                pixels = np.asarray(image)
        except Exception as e:  # Pillow raises many types for bad bytes
            raise ValueError(f"cannot decode {image_format}: {e}") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.shape != shape:
            raise ValueError(f"decoded shape {pixels.shape}, expected {shape}")
    if out is None:
        return pixels
    np.copyto(out, pixels)
    return out


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
    return parse_sample(f.read(end - start), start, end, os.fstat(f.fileno()).st_size)


def parse_sample(blob: bytes, start: int, end: int, shard_size: int) -> dict[str, bytes]:
    """The members of the sample at [start, end) of its shard, from the bytes read there
    (fewer than end - start when the shard, `shard_size` bytes now, ends early); ValueError says
    what is wrong."""
    if len(blob) != end - start:
        raise ValueError(f"shard ends at byte {shard_size}, sample needs bytes {start}..{end}")
    try:
        return parse_members(blob)
    except ValueError as e:
        raise ValueError(f"at byte {start}: {e}") from None


# -- a shard's layout, all samples at once: what the loader's fast path reads by --------------

_OCTAL = 8 ** np.arange(10, -1, -1, dtype=np.int64)  # the 11 digits of a tar size field
_CHECKSUM_OCTAL = _OCTAL[-6:]  # the 6 digits of its checksum field


@dataclass(frozen=True)
class Layout:
    """Where each sample's image data lies in one shard, and its key, from the tar headers."""

    data_start: np.ndarray
    data_size: np.ndarray
    keys: np.ndarray
    ok: np.ndarray
    """False: not the two members write_shard writes, or not readable; parse_sample says why."""


def derive_layout(data: np.ndarray, offsets: np.ndarray, readable: int, image_format: str, shape: tuple[int, int, int], chunk: int = 4096) -> Layout:
    """Check both member headers of every sample of a shard (`data`, its bytes; the first
    `readable` of them there) at once, a chunk of samples per numpy call: checksum, type,
    size, name, exactly two members, the same key. Sample i is ok when all of it holds."""
    ext = EXTENSIONS[image_format].encode()
    raw_size = math.prod(shape) if image_format == "raw" else 0
    starts, ends = offsets[:-1], offsets[1:]
    n = len(starts)
    data_start, data_size = np.zeros(n, np.int64), np.zeros(n, np.int64)
    keys, ok = np.zeros(n, "S100"), np.zeros(n, bool)
    candidates = np.flatnonzero((ends <= readable) & (ends - starts >= 3 * TAR_BLOCK))
    block = np.arange(TAR_BLOCK)
    for part in np.array_split(candidates, max(1, -(-len(candidates) // chunk))):
        start, end = starts[part], ends[part]
        first = data[start[:, None] + block]
        first_ok, first_size = _check_headers(first)
        second_at = start + TAR_BLOCK + _padded(first_size)
        fits = first_ok & (second_at + TAR_BLOCK <= end)
        second = data[np.where(fits, second_at, start)[:, None] + block]
        second_ok, second_size = _check_headers(second)
        image_first = _has_ext(first, ext)
        passed = fits & second_ok & (second_at + TAR_BLOCK + _padded(second_size) == end)
        passed &= image_first ^ _has_ext(second, ext)
        first_key = _key(first)
        passed &= first_key == _key(second)
        size = np.where(image_first, first_size, second_size)
        if raw_size:  # the pixels are the .npy member's last H*W*C bytes
            passed &= size >= raw_size
        data_start[part] = np.where(image_first, start, second_at) + TAR_BLOCK
        data_size[part] = size
        keys[part], ok[part] = first_key, passed
    return Layout(data_start, data_size, np.char.decode(keys), ok)


def _check_headers(headers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pass mask, member size) of (N, 512) headers in the form _member writes: octal size and
    checksum fields, a matching checksum, a regular file, no ustar name prefix."""
    size_digits = headers[:, 124:135].astype(np.int64) - ord("0")
    sum_digits = headers[:, 148:154].astype(np.int64) - ord("0")
    ok = ((size_digits >= 0) & (size_digits <= 7)).all(1) & ((sum_digits >= 0) & (sum_digits <= 7)).all(1)
    ok &= (headers[:, 135] == 0) & (headers[:, 154] == 0)
    ok &= (headers[:, 156] == ord("0")) | (headers[:, 156] == 0)
    ok &= headers[:, 345] == 0
    checksum = headers.sum(1, dtype=np.int64) - headers[:, 148:156].sum(1, dtype=np.int64) + 8 * 32
    ok &= checksum == sum_digits @ _CHECKSUM_OCTAL
    return ok, np.where(ok, size_digits @ _OCTAL, 0)


def _has_ext(headers: np.ndarray, ext: bytes) -> np.ndarray:
    """Whether each header's name ends in '.' + ext."""
    length = np.argmin(headers[:, :100] != 0, axis=1)  # first NUL
    tail = np.frombuffer(b"." + ext, np.uint8)
    at = np.clip(length[:, None] - len(tail) + np.arange(len(tail)), 0, 99)
    return (length > len(tail)) & (np.take_along_axis(headers, at, 1) == tail).all(1)


def _key(headers: np.ndarray) -> np.ndarray:
    """Each header's name up to its first dot, as fixed-width bytes (webdataset's key rule)."""
    names = headers[:, :100].copy()
    names[np.cumsum(names == ord("."), axis=1) > 0] = 0
    return names.view("S100")[:, 0]
