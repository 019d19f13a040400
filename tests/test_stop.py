"""Stop signals: the trainer's flag catches them, and the resume hint is the command line that
started the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import shardgan.stop
from shardgan.stop import EXIT_INTERRUPTED, STOP_SIGNALS, StopFlag, launch_command
from tests.conftest import ROOT


def test_the_flag_records_the_first_stop_signal_and_restores_the_handlers() -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    flag = StopFlag()
    with flag.installed():
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # a copy of the request: the first one counts
        assert flag.signum == signal.SIGUSR1 and flag.name == "SIGUSR1"
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    assert StopFlag().name == ""


def test_a_second_ctrl_c_after_the_repeat_window_interrupts_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    flag = StopFlag()
    with flag.installed():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # within the window: the same request, arriving twice
        assert flag.signum == signal.SIGINT
        monkeypatch.setattr(shardgan.stop, "REPEAT_WINDOW_S", -1.0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.multiproc
@pytest.mark.parametrize(("sig", "line"), [(signal.SIGINT, "interrupted: x"), (signal.SIGTERM, "interrupted: x"), (signal.SIGUSR1, "")], ids=["SIGINT", "SIGTERM", "SIGUSR1-no-line"])
def test_a_stop_signal_before_the_program_takes_them_over_exits_at_once_with_its_line(sig: signal.Signals, line: str) -> None:
    """What launch and train install before importing torch: any stop signal, one line (none for
    an empty one, as ranks other than 0 give) and 130 at once."""
    assert sig in STOP_SIGNALS
    code = f"import os, sys, time; from shardgan.stop import exit_before_start; exit_before_start(sys.argv[1]); os.kill(os.getpid(), {int(sig)}); time.sleep(60)"
    done = subprocess.run([sys.executable, "-c", code, line], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (EXIT_INTERRUPTED, "", f"{line}\n" if line else "")


def test_the_resume_hint_is_the_command_line_that_started_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "import time; print(1, flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code, "data.shards=my shards"], stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()  # running its own command line now
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
        monkeypatch.setattr(os, "getpid", lambda: child.pid)
        assert launch_command() == f"python -c '{code}' 'data.shards=my shards'"
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # a torchrun worker: its parent's command line
        monkeypatch.setattr(os, "getppid", lambda: child.pid)
        assert launch_command().startswith("python -c ")
    finally:
        child.kill()
        child.wait()
