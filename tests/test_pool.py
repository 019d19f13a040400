"""Pack's process pool: results come in task order, and no worker outlives a killed pack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from shardgan.pool import ordered_map, worker_pool

from .conftest import PYTHON, ROOT, alive, survivors


def square_and_pid(x: int) -> tuple[int, int]:
    time.sleep(0.01 * (x % 3))  # uneven work, so finishing order differs from task order
    return x * x, os.getpid()


@pytest.mark.parametrize("num_workers", [1, 3])
def test_results_come_in_task_order(num_workers: int) -> None:
    with worker_pool(num_workers) as pool:
        results = list(ordered_map(pool, square_and_pid, list(range(20))))
    assert [r for r, _ in results] == [x * x for x in range(20)]
    in_here = {pid for _, pid in results} == {os.getpid()}
    assert in_here == (num_workers == 1), "one worker runs in this process, more in a pool"


@pytest.mark.multiproc
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_parent() -> None:
    script = (
        "import multiprocessing, time\n"
        "from shardgan.pool import worker_pool\n"
        "with worker_pool(2):\n"
        "    print(*[p.pid for p in multiprocessing.active_children()], flush=True)\n"
        "    time.sleep(120)\n"
    )
    parent = subprocess.Popen([PYTHON, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2 and all(alive(pid) for pid in workers)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert not survivors(workers), "a worker outlived the killed pack"
