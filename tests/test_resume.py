"""Resume policy: pruning that cannot lose the run, rollbacks, the same command resuming, one
checkpoint for all ranks, and what a resumed run may change."""

from __future__ import annotations

import multiprocessing
import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from shardgan import checkpoint as ckpt
from shardgan.config import Config
from shardgan.errors import CheckpointError
from shardgan.resume import CHANGE_POLICY
from shardgan.rundir import read_metrics
from shardgan.stop import EXIT_STOPPED
from tests.conftest import PYTHON, ROOT, free_port, spawned_ranks
from tests.trainer_runs import CONFIG, ENV, STEPS, TORCHRUN, assert_same_final, checkpoint_exists, newest, refused_resume, train_inprocess, wait_for


def steps_on_disk(run: Path) -> list[int]:
    return [int(p.stem.split("_")[1]) for p in ckpt.list_checkpoints(run / "checkpoints")]


def test_orphan_checkpoint_under_keep_last_1_loses_nothing(tiny_shards: Path, straight: Path, tmp_path: Path) -> None:
    run = tmp_path / "orphan"
    assert train_inprocess(tiny_shards, run, "train.max_steps=20", "checkpoint.keep_last=1") == 0
    # a run that got further was killed between step 30's .pt and its .json
    shutil.copy(run / "checkpoints" / "step_00000020.pt", run / "checkpoints" / "step_00000030.pt")
    assert train_inprocess(tiny_shards, run, "train.max_steps=25", "checkpoint.keep_last=1") == 0
    assert steps_on_disk(run) == [25]
    assert train_inprocess(tiny_shards, run, "checkpoint.keep_last=1") == 0
    assert steps_on_disk(run) == [STEPS]
    assert_same_final(straight, run)


def test_rollback_moves_newer_aside_and_the_same_command_does_not_repeat_it(
    tiny_shards: Path, straight: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "rollback"
    shutil.copytree(straight, run)
    target = run / "checkpoints" / "step_00000030.pt"
    (run / "checkpoints" / "best").mkdir()
    for ext in ("pt", "json"):  # the best checkpoint has the same name as its step's
        shutil.copy(run / "checkpoints" / f"step_00000040.{ext}", run / "checkpoints" / "best")
    assert train_inprocess(tiny_shards, run, f"checkpoint.resume={target}") == 0
    assert "moved the newer step_00000040.pt, step_00000035.pt, best/step_00000040.pt aside into" in capsys.readouterr().err
    (aside,) = (run / "checkpoints").glob("abandoned-*")
    assert sorted(p.name for p in aside.iterdir()) == ["best", "metrics.jsonl", *(f"step_000000{s}.{e}" for s in (35, 40) for e in ("json", "pt"))]
    assert sorted(p.name for p in (aside / "best").iterdir()) == ["step_00000040.json", "step_00000040.pt"]
    assert [r["step"] for r in read_metrics(aside / "metrics.jsonl")] == [35, 40]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(5, STEPS + 1, 5))  # one history, no repeats
    assert_same_final(straight, run)  # 30 -> 40 redone bit-exactly

    assert train_inprocess(tiny_shards, run, f"checkpoint.resume={target}") == 0  # e.g. rerun after a preemption
    assert f"already at step {STEPS} of {STEPS}" in capsys.readouterr().err
    assert len(list((run / "checkpoints").glob("abandoned-*"))) == 1


@pytest.mark.multiproc
def test_rerunning_the_identical_command_resumes_its_run(tiny_shards: Path, straight: Path, tmp_path: Path) -> None:
    """No run.name: the run is named after the config file. Ctrl-C reaches the whole foreground
    process group, DataLoader workers included; the stop message prints the command to rerun."""
    args = ["-m", "shardgan.train", "--config", str(CONFIG), f"data.shards={tiny_shards}", f"run.root={tmp_path}", f"train.max_steps={STEPS}"]
    args += ["checkpoint.every_steps=5", "train.sample_every_steps=10", "data.num_workers=2"]
    run = tmp_path / CONFIG.stem
    proc = subprocess.Popen([PYTHON, *args], env=ENV, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: checkpoint_exists(run, 5), proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, stderr[-3000:]
    assert f"run `{shlex.join(['python', *args])}` again to resume\n" in stderr
    done = subprocess.run([PYTHON, *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"resumed from \S+ at step \d+ \(", done.stderr)
    assert_same_final(straight, run)


@pytest.mark.multiproc
@pytest.mark.slow
def test_a_node_local_run_root_is_refused_before_the_first_step(tiny_shards: Path, tmp_path: Path) -> None:
    """Two 'nodes' (one torchrun each, own working directory) with a node-local run.root=runs:
    two run directories that look alike. A restart that put rank 0 on the other node would start
    from nothing, so every rank stops at start with one line, and no step is trained."""
    port = free_port()
    procs = []
    for rank in range(2):
        cwd = tmp_path / f"node{rank}"
        cwd.mkdir(exist_ok=True)
        args = [TORCHRUN[0], "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}"]
        args += ["-m", "shardgan.train", "--config", str(CONFIG), f"data.shards={tiny_shards}", "run.root=runs", "run.name=local"]
        args += ["data.batch_size=4", "train.max_steps=10", "checkpoint.every_steps=5"]
        procs.append(subprocess.Popen(args, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    done = [subprocess.CompletedProcess(p.args, p.wait(timeout=180), "", p.stderr.read()) for p in procs]
    line = "error: run directory runs/local is not shared: rank 1 on "
    for d in done:
        assert d.returncode != 0 and line in d.stderr and "run.root must be on a file system every node sees" in d.stderr, d.stderr[-3000:]
    assert not checkpoint_exists(tmp_path / "node0" / "runs" / "local", 5)
    assert not list((tmp_path / "node0" / "runs" / "local").glob(".shared-check-*"))


def test_changed_learning_rate_is_applied_with_a_warning(tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "lr"
    assert train_inprocess(tiny_shards, run, "train.max_steps=20") == 0
    assert train_inprocess(tiny_shards, run, "optim.lr_g=0.001", "optim.beta1=0.0") == 0
    err = capsys.readouterr().err
    assert "changed optim.lr_g (0.0002 -> 0.001), optim.beta1 (0.5 -> 0.0): applied" in err and "not bit-exact from here" in err
    group = newest(run)[ckpt.OPT_G]["param_groups"][0]
    assert group["lr"] == 0.001 and group["betas"] == (0.0, 0.999)
    assert [r["lr"] for r in read_metrics(run / "metrics.jsonl") if r["step"] > 20] == [0.001] * 4


def test_changed_loss_is_refused_with_one_line_and_nothing_changes(tiny_shards: Path, straight: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = refused_resume(tiny_shards, straight, tmp_path / "loss", capsys, "model.loss=hinge")
    assert "model.loss (bce -> hinge)" in err and "run.name=NEW" in err


def test_a_checkpoint_from_before_augment_became_diffaugment_resumes_bit_exactly(
    tiny_shards: Path, straight: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Checkpoints written before the rename store DiffAugment's settings as an "augment" table:
    they map to [diffaugment], so the resume sees no change and continues exactly."""
    run = tmp_path / "old"
    shutil.copytree(straight, run)
    for path in ckpt.list_checkpoints(run / "checkpoints"):
        path.unlink(), path.with_suffix(".json").unlink()
    state = ckpt.load_file(straight / "checkpoints" / "step_00000030.pt")
    state[ckpt.CONFIG] = {("augment" if name == "diffaugment" else name): table for name, table in state[ckpt.CONFIG].items()}
    ckpt.save(run / "checkpoints", 30, {k: v for k, v in state.items() if k not in ("format", "version")}, keep_last=3)
    assert train_inprocess(tiny_shards, run) == 0
    assert "with changed" not in capsys.readouterr().err
    assert_same_final(straight, run)


def test_every_config_key_has_a_resume_policy_and_the_docs_table_states_it() -> None:
    keys = {f"{section}.{key}" for section, table in Config().to_dict().items() for key in table}
    assert set(CHANGE_POLICY) == keys
    doc = (ROOT / "docs" / "resume.md").read_text()
    table = dict(re.findall(r"^ *\| `([a-z_]+\.[a-z_0-9]+)` \| (\w+) \|", doc, re.MULTILINE))
    assert table == {k: v for k, v in CHANGE_POLICY.items() if v != "free"}


def _resume_with_one_rank_unable_to_read(rank: int, port: int, results: multiprocessing.Queue, run: Path) -> None:
    """Rank 0 chooses the newest checkpoint; rank 1's read of it fails as a flaky network file system
    does (EIO). Every rank must stop with the same line, naming rank 1 and the file."""
    import errno
    from types import SimpleNamespace

    import shardgan.distributed as dist
    from shardgan.resume import load_chosen
    from shardgan.rundir import RunDir

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world = dist.init("cpu")
    if rank == 1:

        def unreadable(path: Path) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

        ckpt.load_file = unreadable
    try:
        load_chosen(SimpleNamespace(cfg=Config(), world=world), RunDir(run))
        results.put((rank, "resumed"))
    except CheckpointError as e:
        results.put((rank, str(e)))
    finally:
        dist.shutdown()


@pytest.mark.multiproc
def test_a_rank_that_cannot_read_the_chosen_checkpoint_stops_every_rank_in_one_line(straight: Path) -> None:
    chosen = ckpt.list_checkpoints(straight / "checkpoints")[0]
    got, exitcodes = spawned_ranks(_resume_with_one_rank_unable_to_read, straight, timeout=120)
    assert exitcodes == [0, 0]
    expected = f"rank 1 cannot resume from {chosen}, the checkpoint rank 0 chose: [Errno 5] Input/output error: '{chosen}'"
    assert got == [(0, expected), (1, expected)]
