"""Process-group set-up with single-process defaults, and agreement across ranks: alone, every
collective is the identity; with two real gloo ranks, they agree."""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch

import shardgan.distributed as dist
from shardgan.errors import ConfigError
from tests.conftest import spawned_ranks

CPU = torch.device("cpu")


def test_alone_without_torchrun_everything_is_local(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    world = dist.init("cpu")
    assert world == dist.DistInfo(rank=0, world_size=1, local_rank=0, device=CPU) and world.is_main
    assert dist.backend() == "none" and dist.restart_count() == 0
    assert dist.first_failure("") is None and dist.first_failure("disk full") == (0, "disk full")
    assert dist.sum_over_ranks(torch.tensor([1.5, 2.0])).tolist() == [1.5, 2.0]
    assert dist.all_gather_objects({"a": 1}) == [{"a": 1}] and dist.broadcast_from_main("x") == "x"
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


def test_a_steps_flags_are_read_at_the_next_step_or_on_demand() -> None:
    """push(s) answers step s-1's flags (the device flag first), now() the newest, each once."""
    agreement = dist.LateAgreement(CPU)
    nan, ok = torch.tensor(True), torch.tensor(False)
    assert agreement.push(1, ok, [False, True]) is None
    assert agreement.push(2, nan, [False, False]) == (1, [False, False, True])
    assert agreement.push(3, ok, [True, False]) == (2, [True, False, False])
    assert agreement.now() == (3, [False, True, False]) and agreement.now() is None
    assert agreement.push(4, ok, [False, False]) is None


def late_flags(rank: int) -> tuple[int, list[bool]] | None:
    """Rank 1's device flag and rank 0's host flag, agreed and read a step late."""
    agreement = dist.LateAgreement(CPU)
    agreement.push(0, torch.tensor(rank == 1), [rank == 0, False])
    return agreement.now()


def _rank(rank: int, port: int, results: multiprocessing.Queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world = dist.init("cpu")
    try:
        results.put((
            rank,
            world.world_size,
            dist.backend(),
            dist.first_failure("" if rank == 0 else f"rank {rank} failed"),
            dist.first_failure("rank 0 alone failed" if rank == 0 else ""),
            dist.sum_over_ranks(torch.tensor([float(rank), 1.0], dtype=torch.float64)).tolist(),
            dist.all_gather_objects(f"rank {rank}"),
            dist.broadcast_from_main(f"from {rank}"),
            late_flags(rank),
        ))  # fmt: skip
    finally:
        dist.shutdown()


@pytest.mark.multiproc
def test_two_gloo_ranks_agree() -> None:
    got, exitcodes = spawned_ranks(_rank, timeout=120)
    assert exitcodes == [0, 0]
    for rank, world_size, backend, failed, main_failed, sums, gathered, broadcast, late in got:
        assert (world_size, backend) == (2, "gloo"), rank
        assert failed == (1, "rank 1 failed") and main_failed == (0, "rank 0 alone failed")  # every rank raises the same line
        assert sums == [1.0, 2.0]
        assert gathered == ["rank 0", "rank 1"] and broadcast == "from 0"
        assert late == (0, [True, True, False])


SLOW_S, TIMEOUT_S = 4.0, 1.0


def _slow_main(rank: int, port: int, results: multiprocessing.Queue, heartbeats: bool) -> None:
    """Rank 0 works SLOW_S alone, four times the collective timeout; rank 1 waits for it."""
    import time

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init("cpu", timeout_s=TIMEOUT_S)

    def work() -> str:
        time.sleep(SLOW_S)
        return "scores"

    try:
        if heartbeats:
            results.put((rank, dist.run_on_main(work, heartbeat_s=TIMEOUT_S / dist.HEARTBEATS_PER_TIMEOUT)))
        else:
            results.put((rank, dist.broadcast_from_main(work() if rank == 0 else None)))
    except Exception as e:  # noqa: BLE001 - the outcome is the test's result
        results.put((rank, f"failed: {type(e).__name__}"))
    finally:
        dist.shutdown()


def two_slow_ranks(heartbeats: bool) -> list[tuple[int, str | None]]:
    return spawned_ranks(_slow_main, heartbeats, timeout=120)[0]


@pytest.mark.multiproc
def test_work_on_rank_0_longer_than_the_collective_timeout_kills_no_rank() -> None:
    """With train.collective_timeout_s=1 the other rank waits 4 s in heartbeats and goes on; waiting
    in one collective (what evaluation did) dies of the timeout, so the timeout is in force."""
    assert two_slow_ranks(heartbeats=True) == [(0, "scores"), (1, None)]
    plain = two_slow_ranks(heartbeats=False)
    assert plain[1][1].startswith("failed"), plain
