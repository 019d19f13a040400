"""shardgan.launch's exit code is the workers' (the signals themselves: tests/faults/test_interrupt.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from shardgan.launch import NO_WORKER, _exit_code
from shardgan.stop import EXIT_INTERRUPTED, EXIT_STOPPED, STOP_SIGNALS
from tests.conftest import PYTHON, ROOT


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
