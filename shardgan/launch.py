"""`python -m shardgan.launch ARGS`: torchrun with ARGS, ending as its workers did (what `make train` runs).

torchrun answers a stop signal by raising in its monitor loop: a traceback, exit 1, and a second
Ctrl-C during its shutdown wait gives a second, chained one. A stop the workers handled (exit 75)
also ends in its failure report. Here torchrun's own launcher runs in this process, the stop
signals are only passed on to each worker's process group (the workers decide: a checkpoint and
75, or 130 for a second Ctrl-C), and the exit code is the workers', with no report for a stop.
For a single launch without restarts; under a scheduler use torchrun itself (README, exit codes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .stop import EXIT_INTERRUPTED, EXIT_STOPPED, STOP_SIGNALS, exit_before_start

NO_WORKER = "interrupted: no worker was running"

if __name__ == "__main__":  # before the imports below, else a Ctrl-C in them is a KeyboardInterrupt traceback
    exit_before_start(NO_WORKER)  # until main passes the stop signals on: no worker to stop yet, main's line and code for that

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def worker_groups() -> list[int]:
    """This process's children that lead their own process group: torchrun's workers."""
    children = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            children += [int(pid) for pid in (task / "children").read_text().split()]
    return [pid for pid in children if _pgid(pid) == pid]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _pass_on(signum: int, frame: Any) -> None:
    groups = worker_groups()
    if not groups:  # before the workers start (or after they ended): nobody to stop cleanly
        raise KeyboardInterrupt
    for pid in groups:
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass


def _exit_code(failures: dict[int, Any]) -> int:
    """The workers' exit code: a rank's 130 or SIGINT death (a second Ctrl-C) before a rank's 75
    (a stop), whatever the ranks the agent signalled or killed after the first one left show."""
    codes = {f.exitcode for f in failures.values()}
    if codes & {EXIT_INTERRUPTED, -signal.SIGINT}:
        return EXIT_INTERRUPTED
    if EXIT_STOPPED in codes:
        return EXIT_STOPPED
    rank, failure = min(failures.items())
    if failure.exitcode > 0:  # the rank said why, in one line (2, 3) or its traceback (1)
        return failure.exitcode
    print(f"error: rank {rank} was killed by {signal.Signals(-failure.exitcode).name}", file=sys.stderr)
    return 128 - failure.exitcode


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.max_restarts:
        print("error: shardgan.launch passes stop signals to the workers; with --max-restarts a stop would restart them (use torchrun)", file=sys.stderr)
        return 2
    kept = [s for s in args.signals_to_handle.split(",") if s.strip() not in {sig.name for sig in STOP_SIGNALS}]
    args.signals_to_handle = ",".join(kept) or "SIGHUP"
    for sig in STOP_SIGNALS:
        signal.signal(sig, _pass_on)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its failure report: the workers said why
    try:
        run(args)
    except ChildFailedError as e:
        return _exit_code(e.failures)
    except KeyboardInterrupt:
        print(NO_WORKER, file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
