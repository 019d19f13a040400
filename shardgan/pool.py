"""Pack's process pool: results in task order, and workers that never outlive the pack.

Ordered results are what make the output independent of the worker count; workers that die
with the pack process (even by kill -9) are what make a rerun the only writer.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.pool import Pool


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def worker_pool(num_workers: int) -> Iterator[Pool | None]:
    """A process pool for > 1 worker (None = run in this process, no pickling overhead)."""
    if num_workers <= 1:
        yield None
        return
    pool = multiprocessing.get_context().Pool(num_workers, initializer=_die_with_parent)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()  # workers exit on their own: much faster than terminate() for many workers
    finally:
        pool.join()


def ordered_map(pool: Pool | None, fn: Callable, tasks: list) -> Iterable:
    """Results in task order, computed in the pool if there is one."""
    return map(fn, tasks) if pool is None else pool.imap(fn, tasks)


def _die_with_parent() -> None:
    """Workers exit when the pack process dies (even by kill -9) instead of writing on unseen,
    and leave Ctrl-C to it (no traceback from every worker; it terminates them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # parent already gone before prctl took effect
            os._exit(1)
