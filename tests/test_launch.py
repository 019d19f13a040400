"""shardgan.launch's exit code is the workers' (the signals themselves: tests/faults/test_interrupt.py)."""

from __future__ import annotations

import signal
import subprocess
from types import SimpleNamespace

import pytest

from shardgan.launch import _exit_code
from shardgan.stop import EXIT_INTERRUPTED, EXIT_STOPPED
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
