"""Read-ahead of local shards into the page cache, so a first epoch is not latency-bound.

The reader maps shards and the epoch order visits a shard's samples in random order: on a
parallel file system (Lustre, NFS) each sample of a shard not yet in the page cache is then one
small random read paying the network's latency (~18 KB at ~0.5 ms: ~2,000 samples/s per
worker). A `ReadAhead` reads the loader's next shard in large sequential requests (4 MiB), in
the loader's prefetch thread (cache.Prefetcher), so the reading processes find its pages
resident. It reads only the chunks that `mincore` says are not all in the page cache: on a warm
node (a later epoch, a restart) a shard costs a probe of one page per chunk, nothing more,
in the training thread (cache.Prefetcher's `needed`): the thread starts only for a shard to read.

The page cache is the node's, so one read-ahead per rank serves all of its reading processes.
It only reads: batches, their order and every reader guarantee are the same with it or without.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 << 20
"""One read-ahead request: large enough that latency is paid per 4 MiB, not per sample."""
PROBE_EVERY = CHUNK_BYTES // mmap.PAGESIZE
"""Pages between the probes that decide a shard is resident: the last page of each chunk (a
chunk is read front to back) and of the file. mincore costs ~60 ns a page asked: 0.28 ms for a
19 MB shard, 17 % of a cached 88x66 raw epoch on 2 cores; a probe of 5 pages, ~25 us. Pages
read together age together, so a shard is evicted about whole; a shard with a probe missing
gets the page-by-page check."""

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_pages(fd: int, start: int, end: int, every: int = 1) -> np.ndarray:
    """One bool per page of the file's bytes [start, end) (from start's page on), or only for
    the last page of every `every` pages: is it in the page cache now? All False where the
    system cannot say (then everything is worth reading)."""
    first = start - start % mmap.PAGESIZE
    length = end - first
    pages = max(0, -(-length // mmap.PAGESIZE))
    if pages == 0:
        return np.zeros(0, bool)
    address = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, first)
    if address in (None, _MAP_FAILED):
        return np.zeros(pages, bool)
    try:
        if every == 1:
            vec = np.zeros(pages, np.uint8)
            if _libc.mincore(address, length, vec.ctypes.data) != 0:
                return np.zeros(pages, bool)
            return (vec & 1).astype(bool)
        probes = [*range(every - 1, pages - 1, every), pages - 1]
        vec = np.zeros(len(probes), np.uint8)
        out = vec.ctypes.data
        for n, page in enumerate(probes):  # one page a call: mincore's cost is per page asked
            if _libc.mincore(address + page * mmap.PAGESIZE, mmap.PAGESIZE, out + n) != 0:
                return np.zeros(len(probes), bool)
        return (vec & 1).astype(bool)
    finally:
        _libc.munmap(address, length)


class ReadAhead:
    """Called with a shard's index, reads the chunks of its file not yet in the page cache.

    Not thread-safe (one reusable buffer): one per prefetch thread.
    """

    def __init__(self, paths: Sequence[Path], chunk_bytes: int = CHUNK_BYTES):
        self.paths = paths
        self.chunk_bytes = chunk_bytes
        self._buffer: bytearray | None = None
        """Allocated at the first chunk to read: a steady epoch, all cached, needs none (zeroing
        4 MiB cost 2 ms at every epoch start)."""

    def missing(self, shard: int) -> bool:
        """Whether a probe finds pages of the shard's file missing from the page cache (a file
        that cannot be opened is left to the reader, which reports it)."""
        try:
            fd = os.open(self.paths[shard], os.O_RDONLY)
        except OSError:
            return False
        try:
            return not resident_pages(fd, 0, os.fstat(fd).st_size, PROBE_EVERY).all()
        finally:
            os.close(fd)

    def __call__(self, shard: int) -> int:
        """Bytes read from the file (0: it was all in the page cache); asked after `missing`
        (cache.Prefetcher's `needed`), so the page-by-page check runs for probed misses only."""
        fd = os.open(self.paths[shard], os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            missing = ~resident_pages(fd, 0, size)
            per_chunk = self.chunk_bytes // mmap.PAGESIZE
            done = 0
            for first in range(0, len(missing), per_chunk):
                if missing[first : first + per_chunk].any():
                    done += self._read(fd, first * mmap.PAGESIZE)
            log.debug("read ahead %s: %d of %d bytes were not in the page cache", self.paths[shard], done, size)
            return done
        finally:
            os.close(fd)

    def _read(self, fd: int, offset: int) -> int:
        """One request: the chunk at `offset` (the GIL is released while it waits)."""
        if self._buffer is None:
            self._buffer = bytearray(self.chunk_bytes)
        return os.preadv(fd, [self._buffer], offset)
