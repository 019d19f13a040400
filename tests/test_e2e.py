"""The whole pipeline at toy size, as `make train` runs it: frames -> `shardgan pack` -> 2-process
torchrun (gloo) training with SWD evaluation -> run directory -> the same command resumes it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shardgan import checkpoint as ckpt
from shardgan.evaluate import evaluate_run
from shardgan.rundir import RunDir, read_metrics
from shardgan.synthetic import write_frames

from .conftest import PYTHON, ROOT

pytestmark = pytest.mark.multiproc  # every test here starts Python processes

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TOY = [
    "model.width=32", "model.height=24", "model.nz=16", "model.ngf=8", "model.ndf=8",
    "data.batch_size=4", "data.num_workers=0", "train.sample_every_steps=4", "train.log_every_steps=2",
    "checkpoint.every_steps=4", "checkpoint.every_minutes=0", "eval.every_steps=4", "eval.num_images=16",
]  # fmt: skip


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def train(shards: Path, runs: Path, max_steps: int) -> subprocess.CompletedProcess:
    return run([
        PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "shardgan.train",
        "--config", str(ROOT / "configs" / "demo.toml"), f"data.shards={shards}", f"run.root={runs}", "run.name=e2e",
        f"train.max_steps={max_steps}", *TOY,
    ])  # fmt: skip


@pytest.mark.slow
def test_frames_to_packed_shards_to_trained_run_that_resumes(tmp_path: Path) -> None:
    write_frames(tmp_path / "frames", 48, width=160, height=120)
    shards = tmp_path / "shards"
    run([PYTHON, "-m", "shardgan.cli", "pack", str(tmp_path / "frames"), str(shards), "--size", "32x24", "--val", "16", "--workers", "1"])
    assert (shards / "manifest.json").exists()

    rd = RunDir(tmp_path / "runs" / "e2e")
    train(shards, tmp_path / "runs", max_steps=8)
    assert [p.name for p in sorted(rd.samples.glob("*.png"))][-1] == "step_000008.png"
    assert ckpt.list_checkpoints(rd.checkpoints)[0].name == ckpt.checkpoint_name(8)
    assert rd.loss_curve.exists() and rd.swd_curve.exists() and rd.train_batch.exists()
    swd_steps = [r["step"] for r in read_metrics(rd.metrics) if "swd" in r]
    assert swd_steps == [4, 8]
    best = ckpt.list_checkpoints(rd.best_checkpoints)
    assert len(best) == 1 and ckpt.load_file(best[0])[ckpt.STEP] in swd_steps

    resumed = train(shards, tmp_path / "runs", max_steps=12)  # the same command, a longer run: resumes
    assert "resumed from" in resumed.stderr and "at step 8" in resumed.stderr
    assert ckpt.list_checkpoints(rd.checkpoints)[0].name == ckpt.checkpoint_name(12)
    records = read_metrics(rd.metrics)
    loss_steps = [r["step"] for r in records if "loss_d" in r]
    assert loss_steps == sorted(set(loss_steps)) == list(range(2, 13, 2))  # continued, nothing logged twice
    assert [r["step"] for r in records if "swd" in r] == [4, 8, 12]

    _, scores = evaluate_run(rd.root)  # `shardgan eval RUN_DIR`, in-process: the same SWD as logged in training
    assert scores["step"] == 12
    assert scores["swd"] == pytest.approx(next(r["swd"] for r in records if r["step"] == 12 and "swd" in r), rel=1e-3)
