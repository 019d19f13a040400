"""The node-local shard cache against a real HTTP server: once per node, verified, LRU-bounded."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

import shardgan.cache
from shardgan.cache import Prefetcher, ShardCache, auto_limit, cache_warnings, default_cache_dir, file_system
from shardgan.errors import DataError
from shardgan.manifest import ShardInfo, sha256_file
from shardgan.fetch import FetchPolicy

from .conftest import build_dataset
from .http_server import serve

FAST = FetchPolicy(attempts=3, backoff_s=0.01, timeout_s=2.0)


@pytest.fixture
def remote(tmp_path: Path):
    """(server, shards) for 4 shards of different sizes served over http."""
    manifest = build_dataset(tmp_path / "remote", [3, 5, 4, 6])
    with serve(tmp_path / "remote") as server:
        yield server, manifest.split("train").shards


def cached_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.tar"))


def fetch_all(directory: str, url: str, shards: list[ShardInfo], order: list[int]) -> None:
    cache = ShardCache(directory, 0, FAST)
    for i in order:
        cache.ensure(f"{url}/{shards[i].name}", shards[i])


def test_each_shard_is_downloaded_once_by_all_processes_of_a_node(remote, tmp_path):
    server, shards = remote
    orders = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=fetch_all, args=(str(tmp_path / "cache"), server.url, shards, order)) for order in orders]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert {server.requests[s.name] for s in shards} == {1}
    cache = ShardCache(tmp_path / "cache", 0, FAST)
    for s in shards:
        assert sha256_file(tmp_path / "cache" / cache.file_name(s)) == s.sha256
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_a_shard_whose_bytes_differ_from_the_manifest_is_never_cached(remote, tmp_path):
    server, shards = remote
    server.always[shards[1].name] = "corrupt"
    cache = ShardCache(tmp_path / "cache", 0, FAST)
    with pytest.raises(DataError, match=f"cannot fetch {server.url}/{shards[1].name}: sha256 .* differs"):
        cache.ensure(f"{server.url}/{shards[1].name}", shards[1])
    assert cached_names(tmp_path / "cache") == [] and not list((tmp_path / "cache").glob(".*.tmp"))
    del server.always[shards[1].name]
    assert sha256_file(cache.ensure(f"{server.url}/{shards[1].name}", shards[1])) == shards[1].sha256


def test_a_partial_download_or_a_truncated_copy_is_replaced(remote, tmp_path):
    server, shards = remote
    cache = ShardCache(tmp_path / "cache", 0, FAST)
    path = cache.ensure(f"{server.url}/{shards[0].name}", shards[0])
    os.truncate(path, 1024)  # e.g. a disk that lost the tail
    stale = tmp_path / "cache" / f".{cache.file_name(shards[1])}.99999.tmp"  # a download killed midway
    stale.write_bytes(b"partial")
    assert sha256_file(cache.ensure(f"{server.url}/{shards[0].name}", shards[0])) == shards[0].sha256
    cache.ensure(f"{server.url}/{shards[1].name}", shards[1])
    assert not stale.exists()
    assert server.requests[shards[0].name] == 2


def test_eviction_is_least_recently_used_and_spares_shards_being_read(remote, tmp_path):
    server, shards = remote
    a, b, c = shards[:3]
    cache = ShardCache(tmp_path / "cache", a.num_bytes + b.num_bytes + c.num_bytes - 1, FAST)
    url = {s.name: f"{server.url}/{s.name}" for s in shards}
    for age, s in enumerate([a, b]):
        path = cache.ensure(url[s.name], s)
        os.utime(path, (1000 + age, 1000 + age))  # a is the least recently used
    held = cache.open(url[a.name], a)  # a reader holds a (which touches it: make it the oldest again)
    os.utime(tmp_path / "cache" / cache.file_name(a), (999, 999))
    cache.ensure(url[c.name], c)  # needs room: a is oldest but held, so b goes
    assert cached_names(tmp_path / "cache") == sorted(cache.file_name(s) for s in (a, c))
    held.close()
    os.utime(tmp_path / "cache" / cache.file_name(a), (999, 999))
    cache.ensure(url[b.name], b)  # now a goes
    assert cached_names(tmp_path / "cache") == sorted(cache.file_name(s) for s in (b, c))
    assert server.requests[b.name] == 2 and server.requests[a.name] == 1


def test_a_shard_evicted_before_its_reader_opens_it_is_fetched_again(remote, tmp_path):
    server, shards = remote
    cache = ShardCache(tmp_path / "cache", 0, FAST)
    real_ensure = cache.ensure

    def ensure_then_evict(url: str, shard: ShardInfo) -> Path:
        path = real_ensure(url, shard)
        if server.requests[shard.name] == 1:
            path.unlink()  # another process evicted it right after
        return path

    cache.ensure = ensure_then_evict
    with cache.open(f"{server.url}/{shards[0].name}", shards[0]) as f:
        assert len(f.read()) == shards[0].num_bytes
    assert server.requests[shards[0].name] == 2


def test_prefetcher_stays_at_most_depth_shards_ahead():
    fetched: list[int] = []

    def fetch_one(shard: int) -> None:
        fetched.append(shard)

    def settle() -> list[int]:
        time.sleep(0.2)
        return list(fetched)

    prefetcher = Prefetcher(fetch_one, [5, 3, 9, 1, 7], depth=2)
    assert settle() == [5, 3, 9]
    prefetcher.reading(9)
    assert settle() == [5, 3, 9, 1, 7]
    prefetcher.close()


def test_prefetcher_asks_needed_in_the_readers_thread_and_starts_its_own_only_for_a_needed_shard():
    fetched: list[int] = []
    prefetcher = Prefetcher(fetched.append, [5, 3, 9, 1, 7], depth=1, needed=lambda shard: shard in (9, 7))
    time.sleep(0.1)
    assert fetched == [] and prefetcher._thread is None  # 5 and 3 are in reach, not needed
    prefetcher.reading(3)
    time.sleep(0.2)
    assert fetched == [9] and prefetcher._thread.is_alive()
    prefetcher.reading(1)
    time.sleep(0.2)
    assert fetched == [9, 7]
    prefetcher.close()


def test_prefetcher_stops_when_closed_and_leaves_failures_to_the_reader():
    calls: list[int] = []

    def fail(shard: int) -> None:
        calls.append(shard)
        raise DataError("boom")

    prefetcher = Prefetcher(fail, [0, 1, 2, 3], depth=1)
    time.sleep(0.2)
    prefetcher.close()
    prefetcher.reading(3)
    time.sleep(0.1)
    assert calls == [0, 1]


def test_default_cache_directory_is_one_per_slurm_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    plain = default_cache_dir()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert default_cache_dir() == plain.with_name(plain.name + "-job4242")


def test_auto_limit_is_half_the_free_space_plus_what_the_cache_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.tar").write_bytes(b"x" * 3000)
    (tmp_path / "notes.txt").write_bytes(b"x" * 500)  # not a cached shard
    usage = shardgan.cache.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shardgan.cache.shutil, "disk_usage", lambda path: usage._replace(free=10_000))
    assert auto_limit(tmp_path) == (10_000 + 3000) // 2


def test_file_system_is_the_longest_mount_point_above_the_path(tmp_path: Path) -> None:
    mounts = f"/dev/vda1 / ext4 rw 0 0\nserver:/export {tmp_path} nfs4 rw 0 0\ntmpfs {tmp_path}/x/ram tmpfs rw 0 0\n"
    (tmp_path / "x" / "ram").mkdir(parents=True)
    assert file_system(tmp_path / "x" / "cache", mounts) == "nfs4"
    assert file_system(tmp_path / "x" / "ram" / "cache", mounts) == "tmpfs"
    assert file_system(Path("/"), mounts) == "ext4"


def test_cache_warnings_name_a_shared_file_system_and_a_limit_below_an_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shardgan.cache, "file_system", lambda path: "lustre")
    lines = cache_warnings(tmp_path, 2 * 10**9, 5 * 10**9)
    assert lines == [
        f"shard cache {tmp_path} is on a shared file system (lustre): set data.cache_dir to a node-local disk",
        f"shard cache {tmp_path} is limited to 2.0 GB (data.cache_limit) but this node reads 5.0 GB of shards an epoch: every epoch downloads them again",
    ]
    monkeypatch.setattr(shardgan.cache, "file_system", lambda path: "ext4")
    assert cache_warnings(tmp_path, 6 * 10**9, 5 * 10**9) == []
