"""The SLURM recipe (tools/slurm/train.sbatch) run by a plain bash standing in for the batch
shell, with `srun` and `scontrol` stand-ins: SIGUSR1 to the shell alone (what `--signal=B:USR1`
does) must reach every rank as one stop, leave a checkpoint, requeue the job, and the requeued
identical command must resume bit-exactly."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT
from tests.test_resume import free_port
from tests.trainer_runs import ENV, STEPS, assert_same_final, checkpoint_exists, newest_step, train_args, wait_for

pytestmark = pytest.mark.multiproc  # every test here starts Python processes

SBATCH = ROOT / "tools" / "slurm" / "train.sbatch"


def stand_ins(directory: Path) -> Path:
    """`srun` runs its command; `scontrol` names this host and logs requeues."""
    directory.mkdir()
    (directory / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    (directory / "scontrol").write_text('#!/bin/bash\ncase "$1" in\n  show) echo 127.0.0.1 ;;\n  *) echo "$@" >> "$SCONTROL_LOG" ;;\nesac\n')
    for f in directory.iterdir():
        f.chmod(0o755)
    return directory


@pytest.mark.slow
def test_time_limit_signal_to_the_batch_shell_checkpoints_requeues_and_resumes(tiny_shards: Path, straight_ddp: Path, tmp_path: Path) -> None:
    bin_dir = stand_ins(tmp_path / "bin")
    run, requeues = tmp_path / "runs" / "slurm", tmp_path / "scontrol.log"
    env = {**ENV, "PATH": f"{bin_dir}:{Path(PYTHON).parent}:{os.environ['PATH']}", "SCONTROL_LOG": str(requeues)}
    env |= {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node1", "SLURM_NNODES": "1", "NPROC": "2", "MASTER_PORT": str(free_port())}
    command = ["bash", str(SBATCH), *train_args(tiny_shards, run, "data.batch_size=4", "data.num_workers=2")]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: checkpoint_exists(run, 5), proc)
    proc.send_signal(signal.SIGUSR1)  # the batch shell only
    _, stderr = proc.communicate(timeout=120)
    assert "time limit near (SIGUSR1)" in stderr, stderr[-3000:]
    assert requeues.read_text() == "requeue 4242\n"
    assert 5 < newest_step(run) < STEPS
    assert "with a checkpoint; run `" in (run / "train.log").read_text()
    requeued = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert requeues.read_text() == "requeue 4242\n"  # a run that finished is not requeued
    assert_same_final(straight_ddp, run)
