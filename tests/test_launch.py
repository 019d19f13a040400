"""shardgan.launch's exit code is the workers' (the signals themselves: tests/faults/test_interrupt.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from shardgan.launch import NO_WORKER, _exit_code
from shardgan.stop import EXIT_INTERRUPTED, EXIT_STOPPED, STOP_SIGNALS
from shardgan.train import NO_TRAINING
from tests.conftest import PYTHON, ROOT
from tests.trainer_runs import CONFIG, ENV, worker_pids


def failures(*codes: int) -> dict[int, SimpleNamespace]:
    return {rank: SimpleNamespace(exitcode=code) for rank, code in enumerate(codes)}


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ((EXIT_STOPPED, -signal.SIGTERM), EXIT_STOPPED),  # the agent terminated the slower rank after the stop
        ((EXIT_STOPPED, EXIT_STOPPED), EXIT_STOPPED),
        ((EXIT_INTERRUPTED, -signal.SIGKILL), EXIT_INTERRUPTED),
        ((-signal.SIGINT, EXIT_STOPPED), EXIT_INTERRUPTED),
        ((2, -signal.SIGTERM), 2),  # the rank printed its one-line error
    ],
)
def test_exit_code_is_the_workers(codes: tuple[int, ...], expected: int, capsys: pytest.CaptureFixture) -> None:
    assert _exit_code(failures(*codes)) == expected
    assert capsys.readouterr().err == ""


def test_a_rank_killed_by_a_signal_is_named(capsys: pytest.CaptureFixture) -> None:
    assert _exit_code(failures(-signal.SIGKILL, -signal.SIGTERM)) == 128 + signal.SIGKILL
    assert capsys.readouterr().err == "error: rank 0 was killed by SIGKILL\n"


@pytest.mark.multiproc
def test_restarts_are_refused_in_one_line() -> None:
    done = subprocess.run([PYTHON, "-m", "shardgan.launch", "--max-restarts=2", "-m", "shardgan.train"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr


def catches_stop_signals(pid: int) -> bool:
    """The process has handlers for all of STOP_SIGNALS (its SigCgt mask; bit n-1 is signal n)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return all(caught >> (sig - 1) & 1 for sig in STOP_SIGNALS)


def loading_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.multiproc
def test_a_ctrl_c_while_torch_imports_ends_in_one_line() -> None:
    """Ctrl-C as a terminal sends it (SIGINT to the process group) as soon as the launcher catches
    the stop signals or torch's libraries are mapped, whichever is first: during torch's import
    either way, a second or more before main runs. Exit 130, as main's for a stop before the
    workers start (not death by SIGINT: the launcher's codes are exit statuses), and its one line."""
    command = [PYTHON, "-m", "shardgan.launch", "--standalone", "--nproc_per_node=1", "-m", "shardgan.train", "--help"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while proc.poll() is None and not (catches_stop_signals(proc.pid) or loading_torch(proc.pid)):
            time.sleep(0.002)
        assert proc.poll() is None, proc.communicate()  # still importing when signalled
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, err) == (EXIT_INTERRUPTED, f"{NO_WORKER}\n")


def worker_loading_torch(launcher: int) -> bool:
    """A worker of the launcher runs and has torch's libraries mapped: it is in torch's import."""
    with contextlib.suppress(OSError):  # a process that ended meanwhile
        return any(loading_torch(pid) for pid in worker_pids(launcher).values())
    return False


@pytest.mark.multiproc
def test_a_ctrl_c_while_the_worker_imports_torch_ends_in_its_one_line(tiny_shards: Path, tmp_path: Path) -> None:
    """The same Ctrl-C a second or so later, when the launcher passes it on to a worker still in
    torch's import, before train() takes the stop signals over: the worker exits 130 with its one
    line, no traceback and no run directory (nothing to save yet), and the launcher exits as it did."""
    run = tmp_path / "runs" / "mine"
    command = [
        PYTHON, "-m", "shardgan.launch", "--standalone", "--nproc_per_node=1", "-m", "shardgan.train",
        "--config", str(CONFIG), f"data.shards={tiny_shards}", f"run.root={run.parent}", f"run.name={run.name}", "train.max_steps=2",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while proc.poll() is None and not worker_loading_torch(proc.pid):
            time.sleep(0.002)
        assert proc.poll() is None, proc.communicate()  # the worker still importing when signalled
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "Traceback" not in out + err, err[-3000:]
    assert (proc.returncode, out, err) == (EXIT_INTERRUPTED, "", f"{NO_TRAINING}\n")
    assert not run.exists()
