"""The node-local shard cache: remote shards downloaded once per node, then read like local ones.

All ranks and DataLoader workers of a node share one directory (`data.cache_dir`):

- a shard is stored under `<stem>-<sha256[:16]>.tar`, so another dataset's shard of the same
  name never stands in for it;
- one process downloads it, holding an flock on `.locks/<file>.lock`; the others block on that
  lock (no polling) and then find it there;
- the download goes to a temp name, is checked against the manifest's size and sha256, fsynced
  and renamed: a shard in the cache is complete and verified, a bad one never lands;
- readers hold a shared flock on the files they have open; past `data.cache_limit`, the least
  recently used shards (by mtime, touched on every open) that nobody holds are deleted.

A `Prefetcher` thread downloads the next shards of a worker's plan while it reads this one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .atomic import TMP_SUFFIX, atomic_write
from .manifest import ShardInfo
from .fetch import FetchPolicy, fetch

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"
EVICT_LOCK = ".evict.lock"


SHARED_FILE_SYSTEMS = ("nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "glusterfs", "fuse.glusterfs", "panfs", "wekafs", "9p")
"""Mount types that other nodes see too: a node-local cache there is neither local nor private."""


def default_cache_dir() -> Path:
    """shardgan-cache-<uid> in the temp directory; under SLURM one per job (a requeued job keeps its id)."""
    job = os.environ.get("SLURM_JOB_ID")
    return Path(tempfile.gettempdir()) / (f"shardgan-cache-{os.getuid()}" + (f"-job{job}" if job else ""))


def auto_limit(directory: Path) -> int:
    """Half of what the cache could grow to at start: the free space of its file system plus
    what it already holds, so that a cache never fills the disk it shares with others."""
    directory.mkdir(parents=True, exist_ok=True)
    held = sum(p.stat().st_size for p in directory.glob("*.tar"))
    return (shutil.disk_usage(directory).free + held) // 2


def file_system(path: Path, mounts: str | None = None) -> str:
    """The mount type holding `path` (the longest mount point above it in /proc/mounts), or ""."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return ""
    path, best, kind = path.resolve(), -1, ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (path == point or point in path.parents) and len(point.parts) > best:
            best, kind = len(point.parts), fields[2]
    return kind


def cache_warnings(directory: Path, limit_bytes: int, needed_bytes: int) -> list[str]:
    """What to tell the user about a cache before the first download: on a shared file system,
    or with a limit below the shards this node reads in an epoch (each epoch would download them
    all again)."""
    lines = []
    kind = file_system(directory)
    if kind in SHARED_FILE_SYSTEMS or kind.startswith("fuse."):
        lines.append(f"shard cache {directory} is on a shared file system ({kind}): set data.cache_dir to a node-local disk")
    if limit_bytes and limit_bytes < needed_bytes:
        lines.append(
            f"shard cache {directory} is limited to {_size(limit_bytes)} (data.cache_limit) but this node reads "
            f"{_size(needed_bytes)} of shards an epoch: every epoch downloads them again"
        )
    return lines


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.1f} GB" if num_bytes >= 10**8 else f"{num_bytes / 1e6:.1f} MB"


@contextlib.contextmanager
def flocked(path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[None]:
    """Hold an flock on `path` (created if needed); released on exit, or when the process dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


class ShardCache:
    """Verified local copies of remote shards in one node-local directory."""

    def __init__(self, directory: str | Path, limit_bytes: int, policy: FetchPolicy):
        self.directory = Path(directory)
        self.limit_bytes = limit_bytes
        """0: no limit."""
        self.policy = policy

    def file_name(self, shard: ShardInfo) -> str:
        return f"{Path(shard.name).stem}-{shard.sha256[:16]}.tar"

    def open(self, url: str, shard: ShardInfo) -> BinaryIO:
        """The cached copy of `shard` (downloaded from `url` first if needed), open for reading
        and held (shared flock) against eviction until closed."""
        while True:
            path = self.ensure(url, shard)
            try:
                f = open(path, "rb", buffering=0)
            except FileNotFoundError:  # evicted between ensure and open: fetch it again
                continue
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            return f

    def ensure(self, url: str, shard: ShardInfo) -> Path:
        """Path of the verified copy of `shard`, downloading it unless this node already has it."""
        path = self.directory / self.file_name(shard)
        if self._hit(path, shard):
            return path
        (self.directory / LOCK_DIR).mkdir(parents=True, exist_ok=True)
        with flocked(self.directory / LOCK_DIR / f"{path.name}.lock"):
            if self._hit(path, shard):  # another process downloaded it while we waited
                return path
            for stale in self.directory.glob(f".{path.name}.*{TMP_SUFFIX}"):  # its writer died holding this lock
                stale.unlink(missing_ok=True)
            self._make_room(shard.num_bytes)
            with atomic_write(path) as f:
                fetch(url, f, self.policy, shard.num_bytes, shard.sha256)
            log.debug("cached %s as %s", url, path)
        return path

    def _hit(self, path: Path, shard: ShardInfo) -> bool:
        """Present with the right size; the mtime is touched, as the LRU clock."""
        try:
            if path.stat().st_size != shard.num_bytes:
                return False
            os.utime(path)
            return True
        except FileNotFoundError:
            return False

    def _make_room(self, num_bytes: int) -> None:
        """Delete least recently used shards nobody holds until `num_bytes` more fit under the limit."""
        if not self.limit_bytes:
            return
        with flocked(self.directory / EVICT_LOCK):
            entries = []
            for path in self.directory.glob("*.tar"):
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    entries.append((st.st_mtime_ns, st.st_size, path))
            total = sum(size for _, size, _ in entries)
            for _, size, path in sorted(entries):
                if total + num_bytes <= self.limit_bytes:
                    return
                if self._evict(path):
                    total -= size
            if total + num_bytes > self.limit_bytes:
                log.warning("shard cache %s holds %d bytes in use; over data.cache_limit %d", self.directory, total, self.limit_bytes)

    @staticmethod
    def _evict(path: Path) -> bool:
        """Delete `path` unless a reader holds it (shared flock)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        else:
            path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)


class Prefetcher:
    """Fetches a reader's shards in the order it will read them, at most `depth` shards ahead
    of the one it is reading, on a thread of its own. Failures are left to the reader, which
    fetches again and reports them.

    `needed`, when given, is asked in the reader's thread first: a shard it declines (e.g. one
    already in the page cache) never wakes the thread, and the thread starts only for the first
    shard that is needed. A woken thread beside the training thread's copy cost a cached raw
    epoch up to a third on 2 cores: torch's OpenMP copy waits for the core it was given."""

    def __init__(self, fetch_one: Callable[[int], object], sequence: list[int], depth: int, needed: Callable[[int], bool] | None = None):
        self._fetch_one, self._sequence, self._depth, self._needed = fetch_one, sequence, depth, needed
        self._position = {shard: i for i, shard in reversed(list(enumerate(sequence)))}
        self._reading = 0
        self._next = 0
        """The position in `sequence` of the next shard to look at."""
        self._closed = False
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._advance()

    def reading(self, shard: int) -> None:
        """The reader has moved on to `shard`."""
        position = self._position.get(shard, 0)
        if position > self._reading:
            self._reading = position
            self._advance()

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)

    def _advance(self) -> None:
        """Hand the thread the shards now within `depth` of the one being read."""
        while not self._closed and self._next < len(self._sequence) and self._next <= self._reading + self._depth:
            shard = self._sequence[self._next]
            self._next += 1
            if self._needed is None or self._needed(shard):
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="shardgan-prefetch", daemon=True)
                    self._thread.start()
                self._queue.put(shard)

    def _run(self) -> None:
        while (shard := self._queue.get()) is not None and not self._closed:
            try:
                self._fetch_one(shard)
            except Exception as e:  # noqa: BLE001 - the reader fetches again and raises it
                log.debug("prefetch of shard %d failed: %s", shard, e)
