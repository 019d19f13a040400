"""Reading processes: each fills whole batches into slots of one shared ring of batch buffers.

Why processes and not threads: a decoder holds the GIL for part of every image (simplejpeg,
Pillow), and handing a batch between Python threads cost more than copying a raw batch.
Measured on 2 cores (tools/bench_loader.py), two processes decoded JPEG 1.73x as fast as one,
two threads 1.33x. The processes are forked once per loader and live across epochs, so an
epoch boundary costs nothing. A task is (ring slot, positions); the answer is the batch's keys
and corrupt samples, or the error that stopped it. Batch b goes to process b % N and the
answers are taken in order, so a batch's content depends only on its number.

`os.fork`, not multiprocessing: nothing at interpreter exit may wait on these processes.
A cluster stops a job by signalling its whole process group, workers included (torchrun and
SLURM both do): the workers ignore the stop signals (blocked across the fork, so none lands in
between) and the training process decides. A worker exits when its pipe closes, which also
happens when the training process dies, however it dies.
"""

from __future__ import annotations

import os
import signal
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe

import numpy as np
import torch

from .errors import DataError
from .reader import CorruptReport, ShardReader
from .stop import STOP_SIGNALS

_TRAINER_ENDS: weakref.WeakSet[Connection] = weakref.WeakSet()
"""The trainer's end of every worker's pipe (of every loader): a new worker closes them all,
so that each pipe closes when the trainer lets go of it, not when the last worker does."""


class ReadingProcesses:
    """`count` forked processes, each with its own reader, writing into `ring` (shared memory)."""

    def __init__(self, make_reader: Callable[[], ShardReader], ring: torch.Tensor, count: int, on_corrupt: str):
        self._conns: list[Connection] = []
        self._pids: list[int] = []
        for _ in range(count):
            ours, theirs = Pipe()
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                pid = os.fork()
                if pid == 0:  # the worker: never returns into the caller's code
                    status = 1
                    try:
                        for conn in (*_TRAINER_ENDS, ours):
                            conn.close()
                        for s in STOP_SIGNALS:
                            signal.signal(s, signal.SIG_IGN)
                        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                        _serve(theirs, make_reader(), ring, on_corrupt)
                        status = 0
                    finally:
                        os._exit(status)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            theirs.close()
            _TRAINER_ENDS.add(ours)
            self._conns.append(ours)
            self._pids.append(pid)

    def __len__(self) -> int:
        return len(self._conns)

    def send(self, worker: int, slot: int, positions: np.ndarray) -> None:
        try:
            self._conns[worker].send((slot, positions))
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise self._died(worker) from None

    def receive(self, worker: int) -> tuple[list[str], list[CorruptReport]]:
        """The answer to the worker's oldest task; its error is raised here."""
        try:
            answer = self._conns[worker].recv()
        except (EOFError, ConnectionResetError, OSError):
            raise self._died(worker) from None
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _died(self, worker: int) -> DataError:
        try:
            code = os.waitstatus_to_exitcode(os.waitpid(self._pids[worker], 0)[1])
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        except ChildProcessError:  # reaped when it was first found dead
            how = "gone"
        return DataError(f"loader reading process {self._pids[worker]} died ({how}); see its messages above")

    def close(self) -> None:
        """End the processes (whatever batch they are on is not wanted any more) and reap them."""
        for conn, pid in zip(self._conns, self._pids):
            conn.close()
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):  # already reaped by _died
                pass
        self._conns, self._pids = [], []


def _serve(conn: Connection, reader: ShardReader, ring: torch.Tensor, on_corrupt: str) -> None:
    """A worker's loop: read each task's batch into its slot until the pipe closes."""
    torch.set_num_threads(1)  # one core per worker (and no OpenMP pool inherited across fork)
    slots = ring.numpy()
    while True:
        try:
            slot, positions = conn.recv()
        except (EOFError, OSError):
            return
        try:
            answer: object = reader.read_batch(positions, slots[slot], on_corrupt)
        except Exception as e:  # the trainer raises it where the batch was due
            answer = e
        try:
            conn.send(answer)
        except (BrokenPipeError, OSError):
            return
