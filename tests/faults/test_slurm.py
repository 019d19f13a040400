"""The SLURM recipe (tools/slurm/train.sbatch) run by a plain bash standing in for the batch
shell, with `srun` and `scontrol` stand-ins: SIGUSR1 to the shell alone (what `--signal=B:USR1`
does) must reach every rank as one stop, leave a checkpoint, requeue the job, and the requeued
identical command must resume bit-exactly; on two nodes (two agents on 127.0.0.1) it must train
what one node of two ranks trains."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, free_port
from shardgan import checkpoint as ckpt
from tests.trainer_runs import ENV, STEPS, assert_same_final, checkpoint_exists, newest, newest_step, train_args, wait_for

pytestmark = pytest.mark.multiproc  # every test here starts Python processes

SBATCH = ROOT / "tools" / "slurm" / "train.sbatch"


SRUN = """#!/bin/bash
# Skip srun's options; on one node run the command in its place, on $SLURM_NNODES run it once per
# node (node 0 first, until its rendezvous store listens), each with its SLURM_NODEID, a
# node-local TMPDIR under $NODES_DIR and its output in $NODES_DIR/node<i>.log, and pass TERM on.
while [[ $1 == --* ]]; do shift; done
[ "${SLURM_NNODES:-1}" = 1 ] && exec "$@"
for arg in "$@"; do [[ $arg == --rdzv-endpoint=* ]] && port=${arg##*:}; done
pids=()
trap 'kill -TERM "${pids[@]}"' TERM
for ((node = 0; node < SLURM_NNODES; node++)); do
    mkdir -p "$NODES_DIR/node$node/tmp"
    SLURM_NODEID=$node SLURM_PROCID=$node TMPDIR="$NODES_DIR/node$node/tmp" "$@" > "$NODES_DIR/node$node.log" 2>&1 &
    pids+=($!)
    for ((try = 0; node == 0 && try < 600; try++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
done
rc=0
for pid in "${pids[@]}"; do
    wait "$pid" || rc=$?
done
exit $rc
"""


def stand_ins(directory: Path) -> Path:
    """`srun` runs its command once per node (SRUN); `scontrol` names this host and logs requeues."""
    directory.mkdir()
    (directory / "srun").write_text(SRUN)
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


@pytest.mark.slow
def test_two_nodes_rendezvous_and_train_what_one_node_of_two_ranks_trains(tiny_shards: Path, straight_ddp: Path, tmp_path: Path) -> None:
    """SLURM_NNODES=2: srun starts one torchrun agent per node (one rank each, node-local TMPDIR),
    they meet at the first node's c10d store and train to the end. With the one-node order
    (data.canonical_nodes=1) the run is the same world as the 2-rank reference, and ends in its
    state bit for bit."""
    bin_dir, nodes = stand_ins(tmp_path / "bin"), tmp_path / "nodes"
    run = tmp_path / "runs" / "slurm2"
    env = {**ENV, "PATH": f"{bin_dir}:{Path(PYTHON).parent}:{os.environ['PATH']}", "SCONTROL_LOG": str(tmp_path / "scontrol.log"), "NODES_DIR": str(nodes)}
    env |= {"SLURM_JOB_ID": "4243", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2", "NPROC": "1", "MASTER_PORT": str(free_port())}
    command = ["bash", str(SBATCH), *train_args(tiny_shards, run, "data.batch_size=4", "data.num_workers=2", "data.canonical_nodes=1")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    logs = "\n".join(f"--- {p.name}\n" + p.read_text()[-2000:] for p in sorted(nodes.glob("node*.log")))
    assert done.returncode == 0, done.stderr[-2000:] + logs
    assert sorted(p.name for p in nodes.iterdir()) == ["node0", "node0.log", "node1", "node1.log"]
    state = newest(run)
    assert state[ckpt.WORLD_SIZE] == 2 and state[ckpt.LOADER]["world_size"] == 2  # two agents of one rank each
    assert_same_final(straight_ddp, run)


def launch_stand_ins(directory: Path, torchrun_help: str) -> Path:
    """`srun` logs its arguments and runs the rest; `torchrun` answers --help with `torchrun_help`
    and otherwise logs its arguments; `scontrol` names this host."""
    directory.mkdir()
    (directory / "srun").write_text('#!/bin/bash\necho "srun $*" >> "$LAUNCH_LOG"\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    (directory / "torchrun").write_text(f'#!/bin/bash\nif [ "$1" = --help ]; then echo "{torchrun_help}"; exit 0; fi\necho "torchrun $*" >> "$LAUNCH_LOG"\n')
    (directory / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\n")
    for f in directory.iterdir():
        f.chmod(0o755)
    return directory


NEW_TORCHRUN = "usage: torchrun [--signals-to-handle SIGNALS_TO_HANDLE, --signals_to_handle SIGNALS_TO_HANDLE] [--shutdown-timeout, --shutdown_timeout T]"


@pytest.mark.parametrize("torchrun_help", [NEW_TORCHRUN, "usage: torchrun [--nnodes NNODES]"], ids=["torch-with-the-flags", "older-torch"])
def test_the_job_step_gets_its_cpus_a_port_of_its_own_and_only_flags_torchrun_has(tmp_path: Path, torchrun_help: str) -> None:
    bin_dir = launch_stand_ins(tmp_path / "bin", torchrun_help)
    log = tmp_path / "launch.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LAUNCH_LOG": str(log), "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "node1", "SLURM_CPUS_PER_TASK": "48", "SLURM_GPUS_ON_NODE": "8"}  # fmt: skip
    env.pop("MASTER_PORT", None)
    done = subprocess.run(["bash", str(SBATCH), "--config", "configs/gc7m.toml"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    srun, torchrun = log.read_text().splitlines()
    assert srun.startswith("srun --cpus-per-task=48 torchrun ")
    args = torchrun.split()
    assert "--rdzv-endpoint=127.0.0.1:24242" in args and "--nproc_per_node=8" in args  # 20000 + job id % 40000
    assert args[-3:] == ["shardgan.train", "--config", "configs/gc7m.toml"]
    has_flags = torchrun_help == NEW_TORCHRUN
    assert ("--signals_to_handle=SIGTERM,SIGINT,SIGUSR1" in args) == has_flags and ("--shutdown_timeout=300" in args) == has_flags
    assert ("no --signals_to_handle" in done.stderr) == (not has_flags)
