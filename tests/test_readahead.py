"""Read-ahead of local shards: it fills the page cache with the loader's next shard, only
what is missing, and never changes a batch."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import build_dataset
from shardgan.config import DataConfig
from shardgan.loader import ShardLoader
from shardgan.plan import epoch_order
from shardgan.readahead import ReadAhead, resident_pages


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (clean pages only: written back first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident(path: Path) -> np.ndarray:
    fd = os.open(path, os.O_RDONLY)
    try:
        return resident_pages(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def evicted(paths: list[Path]) -> None:
    for path in paths:
        evict(path)
        if resident(path).any():
            pytest.skip(f"this file system keeps {path.parent} in memory (tmpfs?): nothing to read ahead")


def test_read_ahead_reads_only_the_chunks_not_in_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "shard.tar"
    path.write_bytes(os.urandom(3 * 65536 + 100))
    evicted([path])
    assert ReadAhead([path], chunk_bytes=65536)(0) == path.stat().st_size
    assert resident(path).all()
    assert ReadAhead([path], chunk_bytes=65536)(0) == 0  # warm: one mincore call, no read
    evicted([path])
    with open(path, "rb") as f:  # the second chunk is cached again: the other three are read
        f.seek(65536)
        f.read(65536)
    assert ReadAhead([path], chunk_bytes=65536)(0) == 2 * 65536 + 100


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("readahead")
    build_dataset(directory, [64] * 6, image_format="raw")
    return directory


def loader(shards: Path, read_ahead: int, **cfg) -> ShardLoader:
    cfg = {"batch_size": 4, "num_workers": 0, "pin_memory": False, **cfg}
    return ShardLoader(DataConfig(shards=str(shards), read_ahead=read_ahead, **cfg))


@pytest.mark.parametrize("read_ahead", [0, 1])
def test_the_loader_reads_its_next_shard_ahead_and_no_further(dataset: Path, read_ahead: int) -> None:
    """After the first batch of shard s0 (from the page cache's point of view: evicted before),
    read_ahead=1 brings the rank's next shard s1 into the page cache while the loader waits,
    and nothing beyond it; read_ahead=0 leaves s1 out."""
    paths = sorted(dataset.glob("train-*.tar"))
    sequence = list(dict.fromkeys(epoch_order([64] * 6, 0, 0)[:, 0].tolist()))
    evicted(paths)
    batches = iter(loader(dataset, read_ahead))
    next(batches)
    if read_ahead:
        deadline = time.monotonic() + 30
        while not resident(paths[sequence[1]]).all():
            assert time.monotonic() < deadline, "the next shard was not read ahead"
            time.sleep(0.01)
    else:
        time.sleep(0.2)
        assert not resident(paths[sequence[1]]).any()
    assert not any(resident(paths[s]).any() for s in sequence[2:])
    batches.close()


@pytest.mark.parametrize("image_format,num_workers", [("raw", 0), ("png", 2)])
def test_read_ahead_does_not_change_a_batch(tmp_path: Path, image_format: str, num_workers: int) -> None:
    build_dataset(tmp_path, [9, 30, 17, 25], image_format=image_format)
    epochs = {}
    for read_ahead in (0, 1, 2):
        for path in tmp_path.glob("train-*.tar"):
            evict(path)  # where the file system allows it, so that there is something to read ahead
        data = loader(tmp_path, read_ahead, num_workers=num_workers, batch_size=3)
        epochs[read_ahead] = [[(b["key"], b["image"].clone()) for b in data] for _ in range(2)]
        data.close()
    for read_ahead in (1, 2):
        for batches, reference in zip(epochs[read_ahead], epochs[0]):
            assert [keys for keys, _ in batches] == [keys for keys, _ in reference]
            assert all(np.array_equal(a.numpy(), b.numpy()) for (_, a), (_, b) in zip(batches, reference))
