"""Process-group set-up with single-process defaults, and agreement across ranks: alone, every
collective is the identity; with two real gloo ranks, they agree."""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch

import shardgan.distributed as dist
from shardgan.errors import ConfigError
from tests.test_resume import free_port

CPU = torch.device("cpu")


def test_alone_without_torchrun_everything_is_local(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    world = dist.init("cpu")
    assert world == dist.DistInfo(rank=0, world_size=1, local_rank=0, device=CPU) and world.is_main
    assert dist.backend() == "none" and dist.restart_count() == 0
    assert dist.agree_any([True, False], CPU) == [True, False]
    assert dist.agree_all(False, CPU) is False and dist.agree_all(True, CPU) is True
    assert dist.all_reduce_sum([1.5, 2.0], CPU) == [1.5, 2.0]
    assert dist.gather_to_main({"a": 1}) == [{"a": 1}] and dist.broadcast_from_main("x") == "x"
    dist.shutdown()  # nothing to shut down: no error


def test_devices_resolve_per_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dist.resolve_device("cpu", 3) == CPU
    assert dist.resolve_device("cuda", 3, 8, visible=8) == torch.device("cuda", 3)  # each rank its own GPU
    assert dist.resolve_device("cuda:1", 3) == torch.device("cuda", 1)  # one process may choose
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dist.resolve_device("auto", 3) == CPU


def test_a_rank_that_sees_one_gpu_takes_it_whatever_its_local_rank() -> None:
    """SLURM --gpus-per-task=1 (or a per-rank CUDA_VISIBLE_DEVICES) leaves each rank one GPU:
    it is cuda:0 there, and cuda:LOCAL_RANK would not exist."""
    assert dist.resolve_device("cuda", 5, 8, visible=1) == torch.device("cuda", 0)


def test_gpu_choices_that_cannot_work_are_refused() -> None:
    with pytest.raises(ConfigError, match="would put every rank on one GPU"):
        dist.resolve_device("cuda:0", 1, 2, visible=2)
    with pytest.raises(ConfigError, match="LOCAL_RANK 3 but this process sees 2 GPUs"):
        dist.resolve_device("cuda", 3, 4, visible=2)


def _rank(rank: int, port: int, results: multiprocessing.Queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world = dist.init("cpu")
    try:
        results.put((
            rank,
            world.world_size,
            dist.backend(),
            dist.agree_any([rank == 1, False], CPU),
            dist.agree_all(rank == 0, CPU),
            dist.all_reduce_sum([float(rank), 1.0], CPU),
            dist.gather_to_main(f"rank {rank}"),
            dist.broadcast_from_main(f"from {rank}"),
        ))  # fmt: skip
    finally:
        dist.shutdown()


@pytest.mark.multiproc
def test_two_gloo_ranks_agree() -> None:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    ranks = [ctx.Process(target=_rank, args=(r, port, results)) for r in range(2)]
    for process in ranks:
        process.start()
    got = sorted(results.get(timeout=120) for _ in ranks)
    for process in ranks:
        process.join(60)
        assert process.exitcode == 0
    for rank, world_size, backend, any_, all_, sums, gathered, broadcast in got:
        assert (world_size, backend) == (2, "gloo"), rank
        assert any_ == [True, False] and all_ is False  # rank 1's True reaches rank 0; rank 1's False fails "all"
        assert sums == [1.0, 2.0]
        assert gathered == ["rank 0", "rank 1"] and broadcast == "from 0"
