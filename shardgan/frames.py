"""Input side of pack: find frames under SRC and turn one input file into exact W x H x C pixels.

Everything here works on one input at a time and never raises for bad input: a file
that cannot be used becomes a `Skip` with a reason, so a million-file folder with a
few broken files still packs, and every broken file is listed.
"""

from __future__ import annotations

import errno
import io
import math
import os
import re
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .stopwatch import Stopwatch

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".avi", ".webm"})
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF")
"""Decoders tried on an input (so a mislabelled file still opens); never e.g. EPS, which runs Ghostscript."""
RESIZE_MODES = ("stretch", "crop", "pad")
MAX_UPSCALE = 2
"""Inputs that would need more than this much enlargement to reach W x H are skipped as tiny."""
MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb limit; images claiming more pixels are never decoded."""
RESAMPLE = Image.Resampling.BILINEAR
REDUCING_GAP = 3.0
"""Pillow first box-reduces by an integer factor, then resamples the last <= 3x: fast and
indistinguishable from a full bilinear/antialiased resize at this gap."""


@dataclass(frozen=True)
class Skip:
    """An input (or part of one) that was not packed, and why; paths are relative to SRC."""

    path: str
    reason: str

    @property
    def kind(self) -> str:
        """'corrupt: OSError: ...' -> 'corrupt', for counts by kind."""
        return self.reason.split(":", 1)[0]


@dataclass(frozen=True)
class FrameSpec:
    """What every stored frame must look like, and how to get there."""

    width: int
    height: int
    channels: int = 3
    mode: str = "stretch"
    every: int = 1
    """Video only: keep frames 0, k, 2k, ..."""


@dataclass(frozen=True)
class Frame:
    """One decoded, resized frame of an input; `index` is None for still images."""

    index: int | None
    pixels: np.ndarray  # (H, W, C) uint8


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def scan(src: Path) -> tuple[list[tuple[str, int]], list[Skip]]:
    """(relative POSIX path, size) of every image/video file under `src`, sorted, plus unusable entries.

    Sorted so results never depend on file-system order. Directory symlinks are followed
    once (a link back to a directory already scanned counts as a loop); unreadable
    directories, dangling links, link loops and non-regular files are reported, not fatal.
    """
    found: list[tuple[str, int]] = []
    skipped: list[Skip] = []
    seen_dirs: set[tuple[int, int]] = set()
    pending = [src]
    while pending:
        directory = pending.pop()
        info = directory.stat()
        if (info.st_dev, info.st_ino) in seen_dirs:
            skipped.append(Skip(_rel(directory, src), "symlink loop: directory already scanned"))
            continue
        seen_dirs.add((info.st_dev, info.st_ino))
        try:
            entries = list(os.scandir(directory))
        except OSError as e:
            skipped.append(Skip(_rel(directory, src), f"unreadable directory: {e.strerror}"))
            continue
        for entry in entries:
            if _is_dir(entry):
                pending.append(Path(entry.path))
                continue
            if Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                continue
            rel = _rel(Path(entry.path), src)
            try:
                mode, size = (st := entry.stat()).st_mode, st.st_size
            except OSError as e:
                skipped.append(Skip(rel, _stat_failure(entry, e)))
                continue
            if stat.S_ISREG(mode):
                found.append((rel, size))
            else:
                skipped.append(Skip(rel, "not a regular file"))
    return sorted(found), sorted(skipped, key=lambda s: s.path)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _stat_failure(entry: os.DirEntry, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if entry.is_symlink() and isinstance(error, FileNotFoundError):
        return "dangling symlink"
    return f"unreadable: {error.strerror}"


def _rel(path: Path, src: Path) -> str:
    return path.relative_to(src).as_posix() or "."


def load_frames(src: Path, rel: str, spec: FrameSpec, clock: Stopwatch | None = None) -> Iterator[Frame | Skip]:
    """Yield the frames of input `rel` (a path under `src`, as `scan` lists it) resized to `spec`,
    or a Skip saying why something in it was not usable.

    A broken video yields the frames decoded before the damage, then its Skip. `clock` gets
    "decode" (file read included) and "resize" laps.
    """
    for item in _frames(src / rel, spec, clock or Stopwatch()):
        yield Skip(rel, item) if isinstance(item, str) else item


def _frames(path: Path, spec: FrameSpec, clock: Stopwatch) -> Iterator[Frame | str]:
    """load_frames' frames, with a reason (a str) where it yields a Skip."""
    if is_video(path):
        yield from _video_frames(path, spec, clock)
        return
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        yield "vanished: deleted after the scan"
        return
    except OSError as e:
        yield f"unreadable: {e.strerror or e}"
        return
    if not data:
        yield "empty file"
        return
    try:
        pixels = _image_pixels(data, spec, clock)
        clock.lap("resize")  # after the decoded image is freed
        yield Frame(None, pixels)
    except _Unusable as e:
        yield str(e)
    except Exception as e:  # Pillow raises many types on corrupt bytes; none of them may stop a pack
        yield f"corrupt: {_describe(e)}"


def source_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of an input as to_pixels sees it (EXIF rotation applied), from its header
    only; None if it cannot be read (pack then skips it and says why)."""
    try:
        if is_video(path):
            import av

            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                return stream.codec_context.width, stream.codec_context.height
        with Image.open(path) as image:
            width, height = image.size
            rotated = image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
            return (height, width) if rotated else (width, height)
    except Exception:  # noqa: BLE001 - unreadable here is unreadable in the encode stage, which names it
        return None


class _Unusable(Exception):
    """A well-formed input that we refuse (bomb, tiny): its message is the skip reason."""


def _image_pixels(data: bytes, spec: FrameSpec, clock: Stopwatch) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
        except UnidentifiedImageError:
            raise _Unusable("not an image: unrecognised format") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _Unusable(f"decompression bomb: {e}") from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise _Unusable(f"decompression bomb: {width}x{height} pixels > limit {MAX_PIXELS}")
        # JPEG decodes at 1/2, 1/4 or 1/8 scale when that still covers the target (no-op for others).
        image.draft("L" if spec.channels == 1 else None, _needed_size(width, height, spec))
        image.load()
        clock.lap("decode")
        return to_pixels(image, spec)


def to_pixels(image: Image.Image, spec: FrameSpec) -> np.ndarray:
    """Any decoded Pillow image -> (H, W, C) uint8 per spec (orientation, mode, resize, channels)."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    # Rotation from EXIF may swap sides, so the tiny check comes after it.
    width, height = image.size
    needed = _needed_size(width, height, spec)
    if width * MAX_UPSCALE < needed[0] or height * MAX_UPSCALE < needed[1]:
        raise _Unusable(f"too small: {width}x{height} needs > {MAX_UPSCALE}x upscaling to {spec.width}x{spec.height}")
    image = resize(to_8bit(image), spec)
    image = image.convert("L" if spec.channels == 1 else "RGB")
    pixels = np.asarray(image)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def to_8bit(image: Image.Image) -> Image.Image:
    """Palette/alpha/16-bit/bilevel images -> 8-bit L or RGB (alpha composited on black)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's convert("L") clips 16-bit values at 255; scale the full range instead.
        wide = np.asarray(image).astype(np.int64)
        return Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    if image.mode in ("L", "RGB"):
        return image
    return image.convert("L" if image.mode == "1" else "RGB")


def _needed_size(width: int, height: int, spec: FrameSpec) -> tuple[int, int]:
    """Smallest source size that still gives a full-resolution W x H after the resize mode."""
    if spec.mode == "stretch":
        return spec.width, spec.height
    fit = max if spec.mode == "crop" else min
    scale = fit(spec.width / width, spec.height / height)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def resize(image: Image.Image, spec: FrameSpec) -> Image.Image:
    """stretch: ignore aspect; crop: fill then cut the centre; pad: fit inside, black borders."""
    size = (spec.width, spec.height)
    width, height = image.size
    if spec.mode == "stretch":
        return image.resize(size, RESAMPLE, reducing_gap=REDUCING_GAP)
    if spec.mode == "crop":
        scale = max(spec.width / width, spec.height / height)
        crop_w, crop_h = spec.width / scale, spec.height / scale
        left, top = (width - crop_w) / 2, (height - crop_h) / 2
        return image.resize(size, RESAMPLE, box=(left, top, left + crop_w, top + crop_h), reducing_gap=REDUCING_GAP)
    if spec.mode == "pad":
        inner = _needed_size(width, height, spec)
        inner = (min(inner[0], spec.width), min(inner[1], spec.height))
        canvas = Image.new(image.mode, size)
        canvas.paste(image.resize(inner, RESAMPLE, reducing_gap=REDUCING_GAP), ((spec.width - inner[0]) // 2, (spec.height - inner[1]) // 2))
        return canvas
    raise ValueError(f"unknown resize mode {spec.mode!r}")


def _video_frames(path: Path, spec: FrameSpec, clock: Stopwatch) -> Iterator[Frame | str]:
    try:
        import av
    except ImportError:
        yield "video support not installed (pip install 'shardgan[video]')"
        return
    index = -1
    try:
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index % spec.every == 0:
                    image = frame.to_image()
                    clock.lap("decode")
                    pixels = to_pixels(image, spec)
                    clock.lap("resize")
                    yield Frame(index, pixels)
    except FileNotFoundError:
        yield "vanished: deleted after the scan"
    except _Unusable as e:
        yield str(e)
    except Exception as e:  # PyAV/FFmpeg errors on damaged streams; keep the frames decoded so far
        where = f" after frame {index}" if index >= 0 else ""
        # FFmpeg names the file; keep the manifest free of absolute paths.
        yield f"corrupt video{where}: {_describe(e).replace(str(path), path.name)}"


def is_blank(pixels: np.ndarray, threshold: float) -> bool:
    """Near-uniform frame (fade to black/white, loading screen): pixel std below `threshold`.

    Most frames are far from blank, and every 16th value shows it at a fraction of the cost:
    n * var(all) >= m * var(any m of them), so a large enough subset variance proves std >= threshold.
    """
    if threshold <= 0:
        return False
    subset = pixels.reshape(-1)[::16]
    if subset.size * float(subset.var()) > 1.001 * pixels.size * threshold**2:
        return False
    return float(pixels.std()) < threshold


def _describe(error: Exception) -> str:
    """Exception as a reason string without memory addresses, so manifests are reproducible."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", str(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
