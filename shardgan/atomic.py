"""Complete or absent: files that must survive `kill -9` are written to a temp name and renamed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def _fsync(path: str | Path) -> None:
    """fsync by path: a file's bytes, or a directory's entries (opened read-only, as both allow)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str | Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    _fsync(directory)


def temp_path(path: str | Path) -> Path:
    """The temp name carries the pid so concurrent writers (e.g. SLURM array tasks) never share one."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file; on clean exit it is fsynced and renamed to `path`, else removed."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def unpublished_write(path: str | Path) -> Iterator[BinaryIO]:
    """atomic_write's first half: yield a file at `temp_path(path)` (removed if the block fails).

    `publish` completes it later, possibly in another process or thread, so that the writer
    need not wait for the disk.
    """
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def publish(tmp: str | Path, path: str | Path) -> None:
    """fsync a finished temp file, then rename it to `path` (the directory's sync is the caller's:
    one `fsync_dir` may cover many renames, and a lost rename leaves the file absent, not partial)."""
    _fsync(tmp)
    os.replace(tmp, path)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete temp files left by killed writers; returns what was removed."""
    removed = []
    for p in Path(directory).glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed
