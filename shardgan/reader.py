"""Random access to packed samples: whole batches from memory-mapped shards, into one buffer.

A sample is two tar members at a known byte range [offsets[i], offsets[i+1]) of its shard
(shards.py). `read_batch` checks both member headers of every sample of the batch at once
(checksum, type, size, name, layout) once per shard with a handful of numpy operations;
a batch then copies raw pixels with one `index_select` per shard run (`read_batches`: one
for several batches), or hands each compressed image, zero-copy, to its decoder, which
writes straight into the batch. No dict, no header parse and no allocation per
sample. A sample the vectorized check does not pass takes the slow path, the one-sample
parser of shards.py, which either reads it after all (an unusual layout) or says exactly what
is wrong: so corrupt samples are reported with the same words as ever, and skipped in step.

Shards are mapped lazily and at most `max_open_files` at a time (least recently used closed
first), so an epoch over 10,000 shards fits in `ulimit -n`. Local shards may take a quarter of
the process's file limit (up to 1,024): a split that fits stays mapped across epochs, so a
steady epoch neither remaps nor page-faults (remapping cost a third of the raw rate); cached
remote shards keep 8, as each mapped one pins its copy in the cache. A shard cut short while mapped
would raise SIGBUS on access, so each batch first asks the file's current size (one fstat)
and sends samples past it to the slow path, which reports them truncated.
"""

from __future__ import annotations

import mmap
import os
import resource
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch

from .cache import ShardCache
from .config import DataConfig
from .errors import CorruptSampleError, DataError
from .shards import EXTENSIONS, TAR_BLOCK, Layout, decode_image, decode_sample, derive_layout, parse_header, parse_sample
from .source import ShardSource, build_cache, resolve_source

MAX_OPEN_FILES = 8
"""Cached remote shards mapped per reader: the epoch order walks shards one after another."""


def local_open_files() -> int:
    """Local shards mapped per reader: a quarter of the soft file limit, 8 to 1,024."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(MAX_OPEN_FILES, min(1024, (soft if soft != resource.RLIM_INFINITY else 4096) // 4))


@dataclass(frozen=True)
class CorruptReport:
    """A sample that was skipped: where it lives and why."""

    shard: str
    key: str
    reason: str


class _Mapped:
    """One open shard: the file (it holds the cache's shared lock) and its bytes, mapped.

    The mapping is private and writable only so that torch can view it without a warning;
    nothing writes to it, so its pages stay the page cache's.
    """

    def __init__(self, file: BinaryIO):
        self.file = file
        stat = os.fstat(file.fileno())
        self.identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stat.st_size:
            pages = mmap.mmap(file.fileno(), stat.st_size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            self.bytes = torch.frombuffer(pages, dtype=torch.uint8)
        else:
            self.bytes = torch.empty(0, dtype=torch.uint8)
        self.data = self.bytes.numpy()
        self._views: dict[tuple[int, int, int, int], torch.Tensor] = {}

    def __del__(self) -> None:  # when the last thread using it lets go, not at eviction
        self.file.close()

    def size_now(self) -> int:
        """Bytes readable now: the mapped length, or less if the file was cut short since."""
        return min(len(self.data), os.fstat(self.file.fileno()).st_size)

    def bytes_at(self, start: int, end: int) -> bytes:
        """The bytes of [start, end), fewer if the file ends first."""
        return self.data[start : min(end, self.size_now())].tobytes()

    def table(self, first: int, stride: int, count: int, length: int) -> torch.Tensor:
        """The bytes seen as `count` rows of `length`, row k at first + k * stride, for
        index_select to copy whole rows in C with the GIL released (numpy's take would first
        copy the view). Made once per mapping: a view costs ~3 us."""
        key = (first, stride, count, length)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self.bytes.as_strided((count, length), (stride, 1), first)
        return view


class ShardReader:
    """Samples and batches of one split, from local shards or the node-local cache's copies.

    Thread-safe: the loader's threads share one reader.
    """

    def __init__(self, source: ShardSource, cache: ShardCache | None = None, max_open_files: int | None = None):
        assert (cache is None) == (source.urls is None), "remote shards are read through a cache"
        self.source = source
        self.cache = cache
        self.max_open_files = max_open_files or (local_open_files() if cache is None else MAX_OPEN_FILES)
        m = source.manifest
        self.shape = (m.height, m.width, m.channels)
        self._raw_size = m.height * m.width * m.channels
        self.image_format = m.image_format
        self.ext = EXTENSIONS[m.image_format].encode()
        self._maps: OrderedDict[int, _Mapped] = OrderedDict()
        self._layouts: dict[int, _Checked] = {}
        """Kept for every shard read (~140 bytes a sample), not only the mapped ones."""
        self._lock = threading.Lock()

    # -- files ------------------------------------------------------------------------------

    def _map(self, shard: int) -> _Mapped:
        with self._lock:
            if shard in self._maps:
                self._maps.move_to_end(shard)
                return self._maps[shard]
        mapped = _Mapped(self._open(shard))  # outside the lock: a remote shard may download first
        with self._lock:
            if shard in self._maps:  # another thread mapped it meanwhile
                return self._maps[shard]
            while len(self._maps) >= self.max_open_files:
                # A thread still reading the evicted shard keeps it open; it closes after.
                self._maps.popitem(last=False)
            self._maps[shard] = mapped
            return mapped

    def _open(self, shard: int) -> BinaryIO:
        info = self.source.shards[shard]
        if self.cache is not None:
            return self.cache.open(self.source.urls[shard], info)
        path = self.source.manifest.shard_path(info)
        try:
            return open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise DataError(f"shard missing: {path} (it was there at start-up)") from None
        except OSError as e:
            raise DataError(f"cannot open shard {path}: {e.strerror}") from None

    def close(self) -> None:
        with self._lock:
            self._maps.clear()

    # -- one sample: the reference path -----------------------------------------------------

    def read(self, shard: int, index: int) -> dict[str, bytes]:
        """The sample's members {"__key__": key, ext: bytes}; CorruptSampleError says why not."""
        info = self.source.shards[shard]
        mapped = self._map(shard)
        start, end = int(info.offsets[index]), int(info.offsets[index + 1])
        try:
            return parse_sample(mapped.bytes_at(start, end), start, end, mapped.size_now())
        except ValueError as e:
            raise CorruptSampleError(info.name, _key_at(mapped.bytes_at(start, start + TAR_BLOCK), index), str(e)) from None

    def image(self, shard: int, index: int) -> tuple[str, np.ndarray]:
        """The sample's key and its decoded image, (H, W, C) uint8; CorruptSampleError says why not."""
        sample = self.read(shard, index)
        try:
            return sample["__key__"], decode_sample(sample, self.image_format, *self.shape)
        except ValueError as e:
            raise CorruptSampleError(self.source.shards[shard].name, sample["__key__"], str(e)) from None

    # -- a batch ------------------------------------------------------------------------------

    def read_batch(self, positions: np.ndarray, out: np.ndarray, on_corrupt: str = "skip") -> tuple[list[str], list[CorruptReport]]:
        """Read the samples at `positions` ((B, 2) [shard, index]) into `out` ((B, H, W, C) uint8).

        Returns the keys and the corrupt samples. A corrupt sample's slot is filled with a good
        sample of the same batch (on_corrupt=skip), so batch shapes and every rank's batch count
        stay the same; on_corrupt=fail raises its CorruptSampleError.
        """
        if self.image_format == "raw":
            keys = self._copy_raw(positions, out)
            if keys is not None:
                return keys, []
        keys = [""] * len(positions)
        corrupt: list[CorruptReport] = []
        bad: list[int] = []
        shards = positions[:, 0]
        for lo, hi in shard_runs(shards):
            slow = self._read_run(int(shards[lo]), positions[lo:hi, 1], out[lo:hi], keys, lo)
            for j in slow:
                try:
                    keys[lo + j], pixels = self.image(int(shards[lo]), int(positions[lo + j, 1]))
                    np.copyto(out[lo + j], pixels)
                except CorruptSampleError as e:
                    if on_corrupt == "fail":
                        raise
                    corrupt.append(CorruptReport(e.shard, e.key, e.reason))
                    bad.append(lo + j)
        fill_from_good(out, keys, bad, corrupt)
        return keys, corrupt

    def read_batches(self, positions: np.ndarray, out: np.ndarray, on_corrupt: str = "skip") -> list[tuple[list[str], list[CorruptReport]]]:
        """Several batches at once: `positions` (K, B, 2) into `out` (K, B, H, W, C), read_batch's
        answer for each. Intact raw samples take one copy per shard run for all K batches (the
        per-call cost is what limits raw reading); otherwise batch by batch, so that a corrupt
        sample is still filled from its own batch."""
        if self.image_format == "raw" and len(positions) > 1:
            keys = self._copy_raw(positions.reshape(-1, 2), out.reshape(-1, *self.shape))
            if keys is not None:
                size = positions.shape[1]
                return [(keys[k * size : (k + 1) * size], []) for k in range(len(positions))]
        return [self.read_batch(p, o, on_corrupt) for p, o in zip(positions, out)]

    def _copy_raw(self, positions: np.ndarray, out: np.ndarray) -> list[str] | None:
        """The fast path for raw samples: one index_select per shard run, straight into `out`,
        when every sample of those shards passed the layout check and fits the file as it is
        now; None (nothing decided yet) otherwise."""
        flat = torch.from_numpy(out).view(len(out), -1)
        shards = positions[:, 0]
        keys: list[str] = []
        for lo, hi in shard_runs(shards):
            shard = int(shards[lo])
            mapped = self._map(shard)
            checked = self._layout(shard, mapped)
            if not checked.all_ok or checked.end > mapped.size_now():
                return None
            indices = positions[lo:hi, 1]
            checked.pixels(mapped, indices, out=flat[lo:hi])
            keys += checked.layout.keys[indices].tolist()
        return keys

    def encoded(self, positions: np.ndarray) -> tuple[list[str], list[bytes | None], list[CorruptReport]]:
        """The stored image bytes of the samples at `positions`, undecoded (for a decoder
        elsewhere: nvjpeg.py on the GPU, or a benchmark's bound); None where the sample's tar
        members are unreadable, with its report."""
        keys: list[str] = []
        images: list[bytes | None] = []
        corrupt: list[CorruptReport] = []
        ext = self.ext.decode()
        for shard, index in positions.tolist():
            mapped = self._map(shard)
            layout = self._layout(shard, mapped).layout
            start, size = int(layout.data_start[index]), int(layout.data_size[index])
            if layout.ok[index] and start + size <= mapped.size_now():
                keys.append(str(layout.keys[index]))
                images.append(mapped.data[start : start + size].tobytes())
                continue
            try:
                sample = self.read(shard, index)
                keys.append(sample["__key__"])
                images.append(sample[ext] if ext in sample else None)
                if images[-1] is None:
                    corrupt.append(CorruptReport(self.source.shards[shard].name, keys[-1], f"no .{ext} member"))
            except CorruptSampleError as e:
                keys.append(e.key)
                images.append(None)
                corrupt.append(CorruptReport(e.shard, e.key, e.reason))
        return keys, images, corrupt

    def _read_run(self, shard: int, indices: np.ndarray, out: np.ndarray, keys: list[str], first: int) -> list[int]:
        """Fast path for samples of one shard; returns the run positions left to the slow path."""
        mapped = self._map(shard)
        checked = self._layout(shard, mapped)
        layout = checked.layout
        keys[first : first + len(indices)] = layout.keys[indices].tolist()
        if checked.all_ok and checked.end <= mapped.size_now() and self.image_format != "raw":  # no per-sample mask
            return self._decode(mapped, layout.data_start[indices], layout.data_size[indices], np.arange(len(indices)), out)
        data_start, data_size = layout.data_start[indices], layout.data_size[indices]
        ok = layout.ok[indices] & (data_start + data_size <= mapped.size_now())
        good = np.flatnonzero(ok)
        rest = np.flatnonzero(~ok).tolist()
        if self.image_format == "raw":
            if len(good):
                flat = torch.from_numpy(out).view(len(out), -1)
                flat[torch.from_numpy(good)] = checked.pixels(mapped, indices[good])
        else:
            rest += self._decode(mapped, data_start[good], data_size[good], good, out)
        return sorted(rest)

    def _layout(self, shard: int, mapped: _Mapped) -> _Checked:
        """The shard's layout, derived once per process and file (a replaced file is derived anew)."""
        checked = self._layouts.get(shard)
        if checked is None or checked.identity != mapped.identity:
            offsets = np.asarray(self.source.shards[shard].offsets, np.int64)
            layout = derive_layout(mapped.data, offsets, mapped.size_now(), self.image_format, self.shape)
            checked = _Checked(mapped.identity, layout, self._raw_size)
            with self._lock:
                self._layouts[shard] = checked
        return checked

    def _decode(self, mapped: _Mapped, data_start: np.ndarray, data_size: np.ndarray, slots: np.ndarray, out: np.ndarray) -> list[int]:
        """Decode each image straight into its slot; the ones that fail go to the slow path."""
        failed = []
        view = memoryview(mapped.data)
        for j, start, size in zip(slots.tolist(), data_start.tolist(), data_size.tolist()):
            try:
                decode_image(view[start : start + size], self.image_format, *self.shape, out=out[j])
            except ValueError:
                failed.append(j)  # the slow path decodes it again to say why
        return failed


class _Checked:
    """A shard's layout with what the fast path asks of it per batch, worked out once."""

    def __init__(self, identity: tuple[int, int, int], layout: Layout, raw_size: int):
        self.identity, self.layout, self.raw_size = identity, layout, raw_size
        ends = layout.data_start + layout.data_size
        self.pixels_at = ends - raw_size
        """raw: where each sample's pixels start (the .npy member's last H*W*C bytes)."""
        steps = np.diff(self.pixels_at)
        self.stride = int(steps[0]) if len(steps) and steps[0] >= raw_size and (steps == steps[0]).all() else 0
        """raw: the distance between samples when it is one (pack's shards), else 0."""
        self.all_ok = bool(layout.ok.all())
        self.end = int(ends.max(initial=0))
        """Bytes the samples need: a file cut shorter sends each batch to the per-sample check."""

    def pixels(self, mapped: _Mapped, indices: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """raw: the samples' pixels, (len(indices), H*W*C), in one index_select over the shard
        seen as rows one stride apart (as packed), else as a row at every byte offset."""
        if self.stride:
            table, rows = mapped.table(int(self.pixels_at[0]), self.stride, len(self.pixels_at), self.raw_size), indices
        else:
            table, rows = mapped.table(0, 1, len(mapped.bytes) - self.raw_size + 1, self.raw_size), self.pixels_at[indices]
        rows = torch.from_numpy(rows)
        return torch.index_select(table, 0, rows) if out is None else torch.index_select(table, 0, rows, out=out)


def shard_runs(shards: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) of each run of one shard. The epoch order keeps a shard's samples together, so
    a batch is one or two runs (with canonical nodes, one or two per piece), but any order is
    read right: a shard that comes back later is a run of its own."""
    cuts = (np.flatnonzero(shards[1:] != shards[:-1]) + 1).tolist()
    return list(zip([0, *cuts], [*cuts, len(shards)]))


def _key_at(header: bytes, index: int) -> str:
    """The key in a sample's first tar header, or `#index` when the header itself is unreadable."""
    try:
        return parse_header(header)[0].split(".", 1)[0]
    except ValueError:
        return f"#{index}"


def fill_from_good(images: np.ndarray, keys: list[str], bad: list[int], corrupt: list[CorruptReport]) -> None:
    """Overwrite the bad slots with the batch's good samples in turn; all bad -> DataError."""
    if not bad:
        return
    good = sorted(set(range(len(keys))) - set(bad))
    if not good:
        shards = sorted({r.shard for r in corrupt})
        raise DataError(f"every sample of a batch is corrupt (shards {', '.join(shards)}; first: {corrupt[0].key}: {corrupt[0].reason})")
    for n, j in enumerate(bad):
        src = good[n % len(good)]
        images[j] = images[src]
        keys[j] = keys[src]


def load_samples(reader: ShardReader, count: int, seed: int) -> torch.Tensor:
    """`count` random samples (all, if the split holds fewer) of the reader's split as uint8
    (N, C, H, W), in split order; the same seed picks the same samples."""
    sizes = np.array([s.num_samples for s in reader.source.shards])
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(sizes.sum(), size=min(count, int(sizes.sum())), replace=False))
    starts = np.cumsum(sizes) - sizes
    shard = np.searchsorted(starts, picks, side="right") - 1
    images = np.empty((len(picks), *reader.shape), np.uint8)
    reader.read_batch(np.stack([shard, picks - starts[shard]], axis=1), images, on_corrupt="fail")
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def sample_images(cfg: DataConfig, split: str, count: int, seed: int) -> torch.Tensor:
    """`count` random samples of `split` as uint8 (N, C, H, W), wherever data.shards points
    (remote shards through the cache): e.g. the real images SWD compares against."""
    source = resolve_source(cfg, split)
    reader = ShardReader(source, build_cache(cfg, source))
    try:
        return load_samples(reader, count, seed)
    finally:
        reader.close()
