"""Trainer faults: killed ranks, kills inside a checkpoint write, signals, corrupt checkpoints,
a full disk, non-finite losses and bad arguments. Each ends exact or with one clear line."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from shardgan import checkpoint as ckpt
from shardgan import train as train_module
from shardgan.stop import EXIT_STOPPED
from tests.trainer_runs import (
    ENV,
    INJECT,
    STEPS,
    assert_same_final,
    checkpoint_exists,
    newest,
    newest_step,
    torchrun_args,
    train_inprocess,
    wait_for,
    worker_pids,
)


def start_restarting(shards: Path, run: Path, marker: Path, **inject: str) -> subprocess.Popen:
    """The 2-process tiny run under torchrun, which restarts the group up to 3 times; `inject`:
    SHARDGAN_* settings for inject/sitecustomize.py (stderr goes to a file: a pipe could fill up)."""
    env = {**ENV, "PYTHONPATH": str(INJECT), "SHARDGAN_KILL_MARKER": str(marker), **inject}
    args = torchrun_args(shards, run)
    args.insert(args.index("-m"), "--max-restarts=3")
    with open(run.parent / f"{run.name}.stderr", "w") as stderr:
        return subprocess.Popen(args, env=env, stderr=stderr, text=True)


def assert_finished_exact(proc: subprocess.Popen, run: Path, reference: Path, resumes: int) -> None:
    """The run ended cleanly after `resumes` restarts, no temp file is left, and its final state is
    bit-identical to `reference`."""
    proc.wait(timeout=300)
    assert proc.returncode == 0, (run.parent / f"{run.name}.stderr").read_text()[-3000:]
    assert len(resumed_steps(run)) == resumes
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert_same_final(reference, run)


def resumed_steps(run: Path) -> list[int]:
    """The step each restart of `run` resumed from, from rank 0's train.log."""
    log = run / "train.log"
    return [int(s) for s in re.findall(r"resumed from \S+ at step (\d+) \(", log.read_text())] if log.exists() else []


@pytest.mark.multiproc
@pytest.mark.slow
def test_torchrun_restarts_after_sigkill_and_kill_inside_checkpoint_write(tiny_shards: Path, straight_ddp: Path, tmp_path: Path) -> None:
    """Attempt 0: rank 1 gets SIGKILL after a checkpoint. Attempt 1: rank 0 dies inside its first
    checkpoint write. Attempt 2 finishes, with weights bit-identical to the undisturbed run."""
    run, marker = tmp_path / "restarts", tmp_path / "killed_in_write"
    proc = start_restarting(tiny_shards, run, marker, SHARDGAN_KILL_IN_WRITE="1")
    wait_for(lambda: checkpoint_exists(run, 5), proc)
    os.kill(worker_pids(proc.pid)[1], signal.SIGKILL)
    assert_finished_exact(proc, run, straight_ddp, resumes=2)
    assert marker.exists(), "rank 0 was not killed inside a checkpoint write"


def kill_plan(attempt: int) -> list[tuple[str, int, int, float]]:
    """One or two kills, seeded by `attempt`: the i-th lands in restart i as (where, rank, n, delay_s).
    "write": rank 0 is held inside its n-th checkpoint write of that restart and `rank` dies there;
    "between": `rank` dies `delay_s` after the n-th checkpoint of that restart (under 0.2 s: about one
    checkpoint interval of the tiny run, so the last kill still lands well before step STEPS)."""
    rng = random.Random(attempt)
    kills = rng.randint(1, 2)
    return [(rng.choice(["between", "write"]), rng.randrange(2), rng.randint(1, 3 - i), rng.uniform(0.0, 0.2)) for i in range(kills)]


@pytest.mark.multiproc
@pytest.mark.soak
@pytest.mark.parametrize("attempt", range(10))
def test_sigkill_random_rank_at_random_moments_soak(tiny_shards: Path, straight_ddp: Path, tmp_path: Path, attempt: int) -> None:
    """torchrun restarts the group after each kill; the run ends bit-identical to the undisturbed one."""
    run, marker = tmp_path / "soak", tmp_path / "held_in_write"
    kills = kill_plan(attempt)
    pauses = " ".join(f"{restart}:{n}" for restart, (where, _, n, _) in enumerate(kills) if where == "write")
    proc = start_restarting(tiny_shards, run, marker, SHARDGAN_PAUSE_IN_WRITE=pauses)
    for restart, (where, rank, n, delay_s) in enumerate(kills):
        wait_for(lambda: len(resumed_steps(run)) == restart, proc)
        if where == "write":
            wait_for(marker.exists, proc)
        else:
            start = resumed_steps(run)[-1] if restart else 0
            wait_for(lambda: checkpoint_exists(run, start + 5 * n), proc)
            time.sleep(delay_s)
        os.kill(worker_pids(proc.pid)[rank], signal.SIGKILL)
        marker.unlink(missing_ok=True)  # a rank 0 held in its write, if alive, finishes it
    assert_finished_exact(proc, run, straight_ddp, resumes=len(kills))


def send_when(run: Path, step: int, signum: int) -> threading.Thread:
    """Send `signum` to this process once the checkpoint of `step` exists (the loop runs in main)."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while not checkpoint_exists(run, step) and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGINT], ids=["SIGUSR1", "SIGINT"])
def test_preemption_signal_checkpoints_and_resume_is_exact(tiny_shards: Path, straight: Path, tmp_path: Path, signum: int) -> None:
    run = tmp_path / "signal"
    watcher = send_when(run, 5, signum)
    assert train_inprocess(tiny_shards, run) == EXIT_STOPPED
    watcher.join()
    assert 5 < newest_step(run) < STEPS
    assert train_inprocess(tiny_shards, run) == 0
    assert_same_final(straight, run)


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))


class Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def exploit_with_matching_metadata(path: Path) -> None:
    """A pickle that would run code, with its .json rewritten to match (checksums alone can't save us)."""
    data = pickle.dumps({"format": ckpt.FORMAT, "x": Exploit()})
    path.write_bytes(data)
    path.with_suffix(".json").write_text(json.dumps({"num_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("corrupt", [random_bytes, exploit_with_matching_metadata], ids=["random-bytes", "code-running-pickle"])
def test_corrupt_newest_checkpoint_is_refused_and_previous_used(
    tiny_shards: Path, straight: Path, tmp_path: Path, capsys: pytest.CaptureFixture, corrupt: Callable[[Path], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "corrupt"
    shutil.copytree(straight, run)
    bad = run / "checkpoints" / "step_00000040.pt"
    corrupt(bad)
    assert train_inprocess(tiny_shards, run) == 0
    assert f"skipping checkpoint {bad}" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()
    assert_same_final(straight, run)


def test_disk_full_during_checkpoint_stops_with_clear_error(tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "full"
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".pt." in name and name.endswith(".tmp") and checkpoint_exists(run, 5):  # checkpoint writes only
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert train_inprocess(tiny_shards, run) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot write checkpoint") and "No space left on device" in err
    assert "previous checkpoint kept: step_00000005.pt" in err
    monkeypatch.undo()
    assert newest(run)[ckpt.STEP] == 5  # intact and loadable
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000005.json", "step_00000005.pt"]


def test_disk_full_during_a_sample_grid_write_is_one_line_naming_the_file(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "full_grid"
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".png.%d.tmp" % os.getpid()) and checkpoint_exists(run, 10):
            raise OSError(errno.ENOSPC, "No space left on device", os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert train_inprocess(tiny_shards, run) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot write or read ") and "No space left on device" in err and ".png." in err
    monkeypatch.undo()
    assert not [p for p in run.rglob("*.tmp")], "a half-written grid was left behind"
    assert newest(run)[ckpt.STEP] == 15  # the epoch-end grid after step 15's checkpoint failed


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "nan"
    d_loss, g_loss = train_module.LOSSES["bce"]
    calls = {"n": 0}

    def poisoned(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return d_loss(real, fake) * (float("nan") if calls["n"] == 13 else 1.0)

    monkeypatch.setitem(train_module.LOSSES, "bce", (poisoned, g_loss))
    assert train_inprocess(tiny_shards, run) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: non-finite loss at step 13") and "last good checkpoint" in err
    assert newest(run)[ckpt.STEP] == 10


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["train.max_step=5"], "unknown key train.max_step (did you mean 'max_steps'?)"),
        (["data.batch_size=big"], "data.batch_size: expected int"),
        (["model.width=200", "model.height=8"], "model size 200x8"),
        (["model.width=32"], "but the shards in"),
        (["data.batch_size=500"], "is larger than"),
        (["data.shards=/nonexistent/shards"], "/nonexistent/shards"),
        (["checkpoint.resume=/nonexistent/step_00000001.pt"], "checkpoint not found: /nonexistent/step_00000001.pt"),
    ],
    ids=["unknown-key", "wrong-type", "unbuildable-size", "size-mismatch", "batch-too-large", "missing-shards", "missing-checkpoint"],
)
def test_bad_arguments_one_line_nonzero_nothing_written(tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str) -> None:
    run = tmp_path / "runs" / "bad"
    assert train_inprocess(tiny_shards, run, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "runs").exists()
