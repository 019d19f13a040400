"""Complete or absent: a file written through atomic.py exists whole under its name, or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shardgan.atomic import TMP_SUFFIX, atomic_write, publish, remove_stale_temps, temp_path, unpublished_write, write_bytes_atomic


def test_a_finished_write_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    write_bytes_atomic(path, b"new bytes")
    assert path.read_bytes() == b"new bytes" and os.listdir(tmp_path) == ["a.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            assert temp_path(path).exists() and path.read_bytes() == b"old"  # never under the final name mid-write
            raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_temp_names_are_hidden_and_carry_the_pid(tmp_path: Path) -> None:
    tmp = temp_path(tmp_path / "shard.tar")
    assert tmp.parent == tmp_path and tmp.name == f".shard.tar.{os.getpid()}{TMP_SUFFIX}"


def test_unpublished_write_counts_only_once_published(tmp_path: Path) -> None:
    path = tmp_path / "chunk.bin"
    with unpublished_write(path) as f:
        f.write(b"payload")
    assert not path.exists() and temp_path(path).read_bytes() == b"payload"
    publish(temp_path(path), path)
    assert path.read_bytes() == b"payload" and not temp_path(path).exists()
    with pytest.raises(ValueError):
        with unpublished_write(tmp_path / "other.bin"):
            raise ValueError
    assert not temp_path(tmp_path / "other.bin").exists()


def test_stale_temps_of_killed_writers_are_removed_and_nothing_else(tmp_path: Path) -> None:
    stale = [tmp_path / f".x.bin.123{TMP_SUFFIX}", tmp_path / f".y.pt.9{TMP_SUFFIX}"]
    kept = [tmp_path / "x.bin", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for p in stale + kept:
        p.write_bytes(b"")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_publish_fsyncs_the_file_and_atomic_write_the_file_then_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []  # inodes, in fsync order
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "chunk.bin"
    with unpublished_write(path) as f:
        f.write(b"payload")
    tmp_inode = temp_path(path).stat().st_ino
    publish(temp_path(path), path)
    assert synced == [tmp_inode] and path.stat().st_ino == tmp_inode  # the directory's sync is the caller's
    synced.clear()
    write_bytes_atomic(tmp_path / "b.bin", b"bytes")
    assert synced == [(tmp_path / "b.bin").stat().st_ino, tmp_path.stat().st_ino]
