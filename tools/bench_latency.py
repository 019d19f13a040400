"""Benchmark read-ahead (data.read_ahead) on a file system with per-request latency, modelled
on a local disk: the first epoch over shards that are not in the page cache.

A parallel file system (Lustre, NFS) answers each request after a network round trip. Here
every request pays an injected `--latency-ms` (0.5 ms, the issue's figure) on top of the
local disk, and the page cache is real: before each timed epoch the shards are dropped from
it (posix_fadvise DONTNEED), and `mincore` says what is resident. A request is

  - a sample the reader touches whose bytes are not all resident: one delay, then one read of
    the `--window-kb` window(s) around it (the client's read-around; 4 KiB: the sample alone,
    the issue's one 18 KB read per sample);
  - one read-ahead chunk (readahead.CHUNK_BYTES, 4 MiB): one delay, then the read.

Latency, not bandwidth: the delay is per request, whatever its size. Contenders, one epoch of
raw 88x66 samples (~18 KB, the issue's sample) each, rounds interleaved, medians:

  cold_per_sample  shards evicted, no read-ahead (data.read_ahead=0), a request per sample;
  cold_128k        the same, each request reading its 128 KiB window (the Linux NFS client's
                   default read-ahead), so neighbours come along;
  read_ahead       shards evicted, data.read_ahead=1 (the default), 128 KiB windows for what
                   the read-ahead has not brought yet;
  warm             every shard already in the page cache: the bound (no request at all).

The epoch runs the loader's in-thread path with its parts (plan.RankPlan, cache.Prefetcher
with readahead.ReadAhead, ShardReader.read_batch), each slowed where it asks the file system.
The last line is one JSON object.

    .venv/bin/python tools/bench_latency.py [--shards 24] [--rounds 5] [--latency-ms 0.5]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from shardgan.cache import Prefetcher
from shardgan.config import DataConfig
from shardgan.manifest import Manifest, SplitInfo
from shardgan.plan import RankPlan, epoch_order
from shardgan.readahead import ReadAhead, resident_pages
from shardgan.reader import ShardReader
from shardgan.shards import Sample, encode_image, sample_key, write_shard
from shardgan.source import resolve_source
from shardgan.synthetic import game_frame

WIDTH, HEIGHT = 88, 66


class SlowReader(ShardReader):
    """A reader whose every touch of a sample not all in the page cache is one request: the
    latency, then one read of the `window_bytes`-aligned window(s) holding the sample, with the
    kernel's own read-ahead off for it (so a request brings exactly its window). The reader
    touches a shard's samples twice: in offset order when it first checks the shard's layout
    (every sample's headers), then each sample's bytes when a batch takes it."""

    def __init__(self, *args, latency_s: float, window_bytes: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.latency_s, self.window_bytes = latency_s, window_bytes
        self.requests = 0

    def _touch(self, shard: int, indices: list[int]) -> None:
        fd, offsets, window = self._map(shard).file.fileno(), self.source.shards[shard].offsets, self.window_bytes
        resident = resident_pages(fd, 0, int(offsets[-1]))  # one mincore per run; a request updates it
        page = mmap.PAGESIZE
        for index in indices:
            start, end = int(offsets[index]), int(offsets[index + 1])
            if resident[start // page : -(-end // page)].all():
                continue
            time.sleep(self.latency_s)
            self.requests += 1
            lo, hi = start // window * window, -(-end // window) * window
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            os.preadv(fd, [bytearray(hi - lo)], lo)
            resident[lo // page : hi // page] = True

    def _layout(self, shard, mapped):  # noqa: ANN001, ANN202 - the base's signature
        if shard not in self._layouts:
            self._touch(shard, list(range(self.source.shards[shard].num_samples)))
        return super()._layout(shard, mapped)

    def _read_run(self, shard, indices, out, keys, first):  # noqa: ANN001, ANN202
        self._touch(shard, indices.tolist())
        return super()._read_run(shard, indices, out, keys, first)


class SlowReadAhead(ReadAhead):
    """The read-ahead with each of its 4 MiB requests paying the latency first."""

    def __init__(self, *args, latency_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.latency_s = latency_s

    def _read(self, fd: int, offset: int) -> int:
        time.sleep(self.latency_s)
        return super()._read(fd, offset)


def write_data(directory: Path, shards: int, per_shard: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    infos = []
    for n in range(shards):
        samples = [Sample(sample_key(i), encode_image(game_frame(i, WIDTH, HEIGHT), "raw"), {}) for i in range(n * per_shard, (n + 1) * per_shard)]
        infos.append(write_shard(directory / f"train-{n:06d}.tar", samples, "raw"))
    Manifest(WIDTH, HEIGHT, 3, "raw", {"train": SplitInfo(infos)}, root=directory).write(directory)
    return sorted(directory.glob("train-*.tar"))


def evict(paths: list[Path]) -> bool:
    """Drop the shards from the page cache; False where the file system keeps them (tmpfs)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            if resident_pages(fd, 0, os.fstat(fd).st_size).any():
                return False
        finally:
            os.close(fd)
    return True


def epoch(directory: Path, paths: list[Path], epoch_number: int, batch_size: int, latency_s: float, window_bytes: int, read_ahead: int) -> tuple[float, int]:
    """Samples/s of one epoch, and the sample requests it made."""
    source = resolve_source(DataConfig(shards=str(directory)), "train")
    reader = SlowReader(source, latency_s=latency_s, window_bytes=window_bytes)
    sizes = [s.num_samples for s in source.shards]
    order = epoch_order(sizes, 0, epoch_number)
    plan = RankPlan(epoch_number, 0, sum(sizes), 1, 0, batch_size)
    out = np.empty((batch_size, HEIGHT, WIDTH, 3), np.uint8)
    start = time.perf_counter()
    read_ahead_shards = SlowReadAhead(paths, latency_s=latency_s)
    prefetcher = Prefetcher(read_ahead_shards, plan.shard_sequence(order), read_ahead, needed=read_ahead_shards.missing) if read_ahead else None
    for b in range(plan.num_batches):
        positions = order[plan.batch_indices(b)]
        if prefetcher is not None:
            prefetcher.reading(int(positions[0, 0]))
        reader.read_batch(positions, out)
    elapsed = time.perf_counter() - start
    if prefetcher is not None:
        prefetcher.close()
    reader.close()
    return plan.num_batches * batch_size / elapsed, reader.requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=24)
    parser.add_argument("--per-shard", type=int, default=400, help="samples per shard (~18 KB each)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=0.5, help="per request")
    parser.add_argument("--window-kb", type=int, default=128, help="what a sample's request reads (the Linux NFS client's default read-ahead)")
    parser.add_argument("--work", help="a directory on a disk-backed file system (default: the temp dir)")
    args = parser.parse_args()
    latency_s = args.latency_ms / 1000
    with tempfile.TemporaryDirectory(prefix="bench_latency_", dir=args.work) as tmp:
        directory = Path(tmp)
        paths = write_data(directory, args.shards, args.per_shard)
        shard_bytes = paths[0].stat().st_size
        if not evict(paths):
            raise SystemExit(f"{directory} cannot be dropped from the page cache (tmpfs?): pass --work on a disk")
        window = args.window_kb * 1024
        contenders = {  # name: (the window a sample's request reads, read_ahead)
            "cold_per_sample": (mmap.PAGESIZE, 0), f"cold_{args.window_kb}k": (window, 0), "read_ahead": (window, 1), "warm": (window, 0),
        }  # fmt: skip
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        requests: dict[str, list[int]] = {name: [] for name in contenders}
        epoch(directory, paths, 0, args.batch_size, latency_s, window, 0)  # warm-up: imports, first mappings
        for round_ in range(args.rounds):
            for name, (window_bytes, read_ahead) in contenders.items():
                if name != "warm":
                    evict(paths)
                rate, made = epoch(directory, paths, round_, args.batch_size, latency_s, window_bytes, read_ahead)
                rates[name].append(rate)
                requests[name].append(made)
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()) + " samples/s", flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "latency_ms": args.latency_ms, "samples": args.shards * args.per_shard, "shard_bytes": shard_bytes,
        "rounds": args.rounds, "cores": len(os.sched_getaffinity(0)),
        "samples_per_s": {k: round(v) for k, v in median.items()},
        "sample_requests_per_epoch": {k: statistics.median(v) for k, v in requests.items()},
        "read_ahead_vs_cold_per_sample": round(median["read_ahead"] / median["cold_per_sample"], 2),
        f"read_ahead_vs_cold_{args.window_kb}k": round(median["read_ahead"] / median[f"cold_{args.window_kb}k"], 2),
        "read_ahead_vs_warm": round(median["read_ahead"] / median["warm"], 2),
    }  # fmt: skip
    for k, v in median.items():
        print(f"{k:>16}: {v:10,.0f} samples/s, {statistics.median(requests[k]):,.0f} sample requests an epoch")
    print(", ".join(f"{k.replace('_vs_', ' / ')}: {v:.2f}x" for k, v in result.items() if "_vs_" in k))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
