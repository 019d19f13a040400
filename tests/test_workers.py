"""Reading processes: the same batches as reading inline, stop signals left to the trainer, a
dead worker named, nothing left behind when the trainer dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import torch

from .conftest import PYTHON, ROOT, build_dataset, corrupt_images, survivors
from shardgan.config import DataConfig
from shardgan.errors import CorruptSampleError, DataError
from shardgan.loader import ShardLoader
from shardgan.reader import ShardReader
from shardgan.shards import sample_key
from shardgan.source import ShardSource
from shardgan.synthetic import game_frame
from shardgan.workers import ReadingProcesses


def loader(shards: Path, workers: int, **cfg) -> ShardLoader:
    return ShardLoader(DataConfig(shards=str(shards), batch_size=4, num_workers=workers, pin_memory=False, **cfg))


def epoch(ld: ShardLoader) -> tuple[list[list[str]], np.ndarray]:
    keys, images = [], []
    for batch in ld:
        keys.append(batch["key"])
        images.append(batch["image"].numpy().copy())
    return keys, np.stack(images)


@pytest.mark.parametrize("image_format", ["png", "jpg"])
def test_processes_read_what_the_training_thread_reads(tmp_path, image_format):
    shards = build_dataset(tmp_path, [9, 14, 6], image_format=image_format).root
    inline, forked = loader(shards, 0), loader(shards, 3)
    for _ in range(2):  # the processes live across the epoch end
        assert_equal_epochs(epoch(inline), epoch(forked))
    forked.close()


def test_each_task_fills_the_ring_slot_it_names_and_errors_come_back_as_answers(tmp_path):
    """ReadingProcesses on its own: a task is (slot, positions), its answer the keys (in task
    order per process), its pixels in that slot of the shared ring; a read error is raised by receive."""
    manifest = build_dataset(tmp_path, [9, 14, 6])
    corrupt_images(tmp_path / "train-000001.tar", [sample_key(12)])
    ring = torch.zeros((3, 3, 12, 16, 3), dtype=torch.uint8).share_memory_()  # (slots, B, H, W, C)
    processes = ReadingProcesses(lambda: ShardReader(ShardSource(manifest, "train", None)), ring, 2, "fail")
    try:
        processes.send(0, 2, np.array([[1, 0], [1, 1], [1, 2]]))  # [shard, index]: samples 9, 10, 11
        processes.send(1, 0, np.array([[2, 5], [0, 0], [0, 8]]))  # samples 28, 0, 8
        processes.send(0, 1, np.array([[0, 3], [0, 4], [1, 13]]))  # samples 3, 4, 22
        assert processes.receive(0) == ([sample_key(i) for i in (9, 10, 11)], [])  # its first task first
        assert processes.receive(0) == ([sample_key(i) for i in (3, 4, 22)], [])
        assert processes.receive(1) == ([sample_key(i) for i in (28, 0, 8)], [])
        for slot, samples in {2: (9, 10, 11), 0: (28, 0, 8), 1: (3, 4, 22)}.items():
            np.testing.assert_array_equal(ring[slot].numpy(), np.stack([game_frame(i, 16, 12) for i in samples]))
        processes.send(1, 0, np.array([[1, 2], [1, 3]]))  # sample 12 is corrupt, and on_corrupt is fail
        with pytest.raises(CorruptSampleError, match="corrupt sample '000000012' in train-000001.tar"):
            processes.receive(1)
    finally:
        processes.close()


def assert_equal_epochs(a, b) -> None:
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


def test_stop_signals_to_the_process_group_leave_the_workers_reading(tmp_path):
    """torchrun and SLURM signal every process of the group: the workers must not die of it;
    the trainer (here a script that notes the signal) decides, and reads on."""
    shards = build_dataset(tmp_path, [9, 14, 6]).root
    want = [k for keys in epoch(loader(shards, 0))[0] for k in keys]
    script = (
        "import signal, sys\n"
        "from shardgan.config import DataConfig\n"
        "from shardgan.loader import ShardLoader\n"
        "got = []\n"
        f"ld = ShardLoader(DataConfig(shards={str(shards)!r}, batch_size=4, num_workers=2, pin_memory=False, prefetch_factor=1))\n"
        "keys = []\n"
        "for batch in ld:\n"
        "    keys += batch['key']\n"
        "    if len(keys) == 4:  # the workers run; a handler of the trainer's set now is not theirs\n"
        "        signal.signal(signal.SIGTERM, lambda *a: got.append('SIGTERM'))\n"
        "        print('ready', flush=True)\n"
        "        sys.stdin.readline()\n"
        "print(got, ' '.join(keys), flush=True)\n"
    )
    proc = subprocess.Popen([PYTHON, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    os.killpg(proc.pid, signal.SIGTERM)  # the trainer and both workers, as a cluster does
    time.sleep(0.3)
    out, _ = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0
    assert out.split("] ", 1) == ["['SIGTERM'", " ".join(want) + "\n"]


def test_a_killed_worker_is_named_not_waited_for(tmp_path):
    shards = build_dataset(tmp_path, [9, 14, 6]).root
    ld = loader(shards, 2, prefetch_factor=1)
    it = iter(ld)
    next(it)
    victim = ld._workers._pids[1]
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(DataError, match=rf"reading process {victim} died \(killed by SIGKILL\)"):
        for _ in it:
            pass
    ld.close()


def test_workers_exit_when_the_trainer_is_killed(tmp_path):
    """A trainer killed with SIGKILL runs no clean-up: its workers must go by themselves."""
    shards = build_dataset(tmp_path, [9, 14, 6]).root
    script = (
        "import os, sys, time\n"
        "from shardgan.config import DataConfig\n"
        "from shardgan.loader import ShardLoader\n"
        f"ld = ShardLoader(DataConfig(shards={str(shards)!r}, batch_size=4, num_workers=2, pin_memory=False))\n"
        "next(iter(ld))\n"
        "print(*ld._workers._pids, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([PYTHON, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.kill()
    proc.wait()
    assert not survivors(pids)


def test_raw_shards_are_read_in_the_training_thread(tmp_path):
    """Chosen by measurement: a hand-over costs more than a raw copy (tools/bench_loader.py)."""
    shards = build_dataset(tmp_path, [9, 14, 6], image_format="raw").root
    ld = loader(shards, 2)
    assert_equal_epochs(epoch(ld), epoch(loader(shards, 0)))
    assert ld._workers is None
