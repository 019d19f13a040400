"""Preemption as clusters deliver it: SIGTERM/SIGINT/SIGUSR1 to every process of the job (what
SLURM's cgroup kill and Kubernetes do), to torchrun alone (which forwards it to each worker's
process group) or to one rank, with 0-2 DataLoader workers, at the first batches, mid-epoch or
inside a checkpoint write. Every case must write a stop checkpoint on all ranks at one step and
resume bit-exactly when the identical command line is run again."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.trainer_runs import ENV, INJECT, STEPS, assert_same_final, checkpoint_exists, newest_step, process_tree, torchrun_args, wait_for, worker_pids

pytestmark = pytest.mark.multiproc  # every test here starts Python processes

SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "SIGUSR1": signal.SIGUSR1}
DELIVERIES = ("job", "torchrun", "rank")
MOMENTS = ("first-batches", "mid-epoch", "in-write")


def deliver(proc: subprocess.Popen, signum: int, delivery: str, rank: int) -> None:
    if delivery == "job":  # every process at once, DataLoader workers included
        for pid in process_tree(proc.pid):
            os.kill(pid, signum)
    elif delivery == "torchrun":
        proc.send_signal(signum)
    else:
        os.kill(worker_pids(proc.pid)[rank], signum)


def preempt_and_resume(shards: Path, reference: Path, run: Path, sig: str, delivery: str, moment: str, workers: int, rng: random.Random) -> None:
    """Start the 2-rank run, signal it at `moment`, check the stop, rerun the same command, compare."""
    marker = run.parent / f"{run.name}.in_write"
    args = torchrun_args(shards, run, f"data.num_workers={workers}")
    env = {**ENV, "PYTHONPATH": str(INJECT), "SHARDGAN_KILL_MARKER": str(marker)}
    if moment == "in-write":
        env["SHARDGAN_PAUSE_IN_WRITE"] = f"0:{rng.randint(1, 3)}"
    stderr_path = run.parent / f"{run.name}.stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(args, env=env, stderr=stderr, text=True, start_new_session=True)
    if moment == "first-batches":
        wait_for((run / "train.log").exists, proc)
    elif moment == "mid-epoch":
        wait_for(lambda: checkpoint_exists(run, 5), proc)
        time.sleep(rng.uniform(0.0, 0.15))
    else:
        wait_for(marker.exists, proc)
    deliver(proc, SIGNALS[sig], delivery, rng.randrange(2))
    marker.unlink(missing_ok=True)  # rank 0, held inside its write, finishes it
    proc.wait(timeout=120)
    log = stderr_path.read_text()
    assert proc.returncode != 0, "torchrun should report the stopped run as not finished"
    assert "DataLoader worker" not in log and "[rank0]: Traceback" not in log and "[rank1]: Traceback" not in log, log[-3000:]
    stopped_at = newest_step(run)
    assert 0 < stopped_at < STEPS, "the stop should leave a checkpoint mid-run"
    assert f"at step {stopped_at} with a checkpoint; run `" in (run / "train.log").read_text()
    done = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)  # the identical command line
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at step {stopped_at} (" in (run / "train.log").read_text()
    assert_same_final(reference, run)


CASES = [
    ("SIGTERM", "job", "mid-epoch", 2),
    ("SIGTERM", "job", "first-batches", 2),
    ("SIGINT", "job", "in-write", 0),
    ("SIGTERM", "torchrun", "mid-epoch", 2),
    ("SIGUSR1", "torchrun", "first-batches", 1),
    ("SIGUSR1", "rank", "in-write", 2),
]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "delivery", "moment", "workers"), CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_stop_signal_checkpoints_and_same_command_resumes_exactly(
    tiny_shards: Path, straight_ddp: Path, tmp_path: Path, sig: str, delivery: str, moment: str, workers: int
) -> None:
    preempt_and_resume(tiny_shards, straight_ddp, tmp_path / "run", sig, delivery, moment, workers, random.Random(0))


@pytest.mark.soak
@pytest.mark.parametrize("trial", range(30))
def test_preemption_soak(tiny_shards: Path, straight_ddp: Path, tmp_path: Path, trial: int) -> None:
    """`make soak`: signal x delivery x moment x workers drawn at random, 30 trials."""
    rng = random.Random(1000 + trial)
    case = (rng.choice(list(SIGNALS)), rng.choice(DELIVERIES), rng.choice(MOMENTS), rng.randint(0, 2))
    print("trial", trial, case)
    preempt_and_resume(tiny_shards, straight_ddp, tmp_path / "run", *case, rng)
