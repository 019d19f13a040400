"""Preemption signals: the trainer catches them and stops at a step boundary with a checkpoint.

A cluster stops a job by signalling its whole process group (torchrun does so for each
worker, SLURM for each job step). The loader's reading processes (workers.py) ignore these
signals and read on, so only the trainer decides: it finishes the step, saves and exits,
and the workers go when their pipes close.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
EXIT_STOPPED = 75
"""Exit code of a run stopped by a signal after writing its checkpoint: EX_TEMPFAIL of
sysexits.h ("temporary failure, try again"), so `&&` chains stop and job scripts can requeue."""
EXIT_INTERRUPTED = 130
"""Exit code of a second Ctrl-C, which interrupts at once (128 + SIGINT, as a shell reports it)."""
RESUME_COMMAND_ENV = "SHARDGAN_RESUME_COMMAND"
"""Set by a wrapper (the Makefile: `make train ...`) whose command is what resumes, not the trainer's own."""


def exit_before_start(line: str) -> None:
    """Handlers for a program's first seconds, installed before its imports (torch's take a second
    or more): a stop signal before the program takes them over prints `line` (if any) and exits
    EXIT_INTERRUPTED at once, whichever signal it was. Nothing has started that a stop could save,
    and an exception would unwind through the import as a KeyboardInterrupt traceback."""

    def exit_now(signum: int, frame: Any) -> None:
        if line:
            print(line, file=sys.stderr, flush=True)
        os._exit(EXIT_INTERRUPTED)

    for sig in STOP_SIGNALS:
        signal.signal(sig, exit_now)


REPEAT_WINDOW_S = 2.0
"""Copies of one stop request arrive within milliseconds (a job-wide signal plus torchrun forwarding it)."""


class StopFlag:
    """Set by a stop signal; the loop stops at the next step boundary, all ranks at the same step.

    A second SIGINT, later than REPEAT_WINDOW_S after the first, interrupts at once, for a user
    who really means it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._at = 0.0

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self._at = signum, time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - self._at > REPEAT_WINDOW_S:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def launch_command() -> str:
    """The command line that started this run, to print as the way to resume it: torchrun's own
    when this is one of its workers, else this process's (`shardgan train ...`, `python -m ...`);
    RESUME_COMMAND_ENV when a wrapper set it."""
    if os.environ.get(RESUME_COMMAND_ENV):
        return os.environ[RESUME_COMMAND_ENV].strip()
    pid = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else os.getpid()
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        argv = [sys.executable, *sys.argv]
    if len(argv) > 1 and Path(argv[0]).name.startswith("python") and Path(argv[1]).name in ("torchrun", "shardgan"):
        argv = [Path(argv[1]).name, *argv[2:]]  # a console script run by its interpreter
    elif argv and Path(argv[0]).name.startswith("python"):
        argv[0] = "python"
    return shlex.join(argv)
