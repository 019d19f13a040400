"""Shared test data: packed datasets and frame folders, generated from shardgan.synthetic's frames."""

from __future__ import annotations

import multiprocessing
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from shardgan.manifest import Manifest, SplitInfo
from shardgan.shards import Sample, encode_image, sample_key, write_shard
from shardgan.synthetic import game_frame, write_frames

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
pytest_plugins = ["tests.trainer_runs"]  # trainer session fixtures, computed once for all test files


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need CUDA: without it they are skipped (and say so), not failed."""
    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


def build_dataset(
    directory: Path,
    shard_sizes: list[int],
    width: int = 16,
    height: int = 12,
    channels: int = 3,
    image_format: str = "png",
    val_sizes: tuple[int, ...] = (),
) -> Manifest:
    """Write shards + manifest directly (no pack) so loader/trainer tests stand on their own.

    Sample pixels encode their global index, so tests can check which sample came out.
    """
    directory.mkdir(parents=True, exist_ok=True)
    splits: dict[str, SplitInfo] = {}
    index = 0
    for split, sizes in (("train", shard_sizes), ("val", list(val_sizes))):
        infos = []
        for shard_no, size in enumerate(sizes):
            samples = []
            for _ in range(size):
                pixels = game_frame(index, width, height)[:, :, :channels]
                samples.append(Sample(sample_key(index), encode_image(pixels, image_format), {"src": f"frame_{index}.png"}))
                index += 1
            infos.append(write_shard(directory / f"{split}-{shard_no:06d}.tar", samples, image_format))
        splits[split] = SplitInfo(infos)
    manifest = Manifest(width, height, channels, image_format, splits, num_inputs=index, root=directory)
    manifest.write(directory)
    return manifest


@pytest.fixture
def frames_dir(tmp_path: Path) -> Path:
    write_frames(tmp_path / "frames", 40)
    return tmp_path / "frames"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawned_ranks(target: Callable[..., None], *args: object, world_size: int = 2, timeout: float = 180) -> tuple[list, list[int | None]]:
    """`target(rank, port, results, *args)` in `world_size` spawned processes that form a gloo group
    on 127.0.0.1, each putting one result that begins with its rank: the results in rank order,
    and the processes' exit codes."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    ranks = [ctx.Process(target=target, args=(r, port, results, *args)) for r in range(world_size)]
    for process in ranks:
        process.start()
    got = sorted((results.get(timeout=timeout) for _ in ranks), key=lambda r: r[0])
    for process in ranks:
        process.join(60)
    return got, [process.exitcode for process in ranks]

