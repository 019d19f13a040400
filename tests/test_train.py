"""Trainer: straight == stopped/killed + resumed (bit-identical), run directory, generate, refusals."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from shardgan import checkpoint as ckpt
from shardgan.rundir import read_metrics
from shardgan.stop import EXIT_STOPPED
from tests.conftest import PYTHON
from tests.trainer_runs import (
    CONFIG,
    ENV,
    STEPS,
    assert_same_final,
    checkpoint_exists,
    newest,
    newest_step,
    refused_resume,
    torchrun_args,
    train_args,
    train_inprocess,
    wait_for,
    worker_pids,
)


def test_run_dir_holds_outputs(straight: Path) -> None:
    for name in ("config.toml", "architecture.txt", "train.log", "metrics.jsonl", "train_batch.png", "loss_curve.png"):
        assert (straight / name).stat().st_size > 0, name
    assert "Generator" in (straight / "architecture.txt").read_text() and "Discriminator" in (straight / "architecture.txt").read_text()
    samples = sorted(p.name for p in (straight / "samples").iterdir())
    assert samples == ["step_000010.png", "step_000015.png", "step_000020.png", "step_000030.png", "step_000040.png"]
    assert [p.name for p in ckpt.list_checkpoints(straight / "checkpoints")] == [f"step_{s:08d}.pt" for s in (40, 35, 30)]
    records = read_metrics(straight / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(5, STEPS + 1, 5))
    assert set(records[0]) == {"step", "epoch", "loss_d", "loss_g", "d_real", "d_fake", "diversity", "augment_p", "images_per_s", "lr"}
    assert [r["epoch"] for r in records][:4] == [0, 0, 0, 1]
    state = newest(straight)
    assert state[ckpt.LOADER]["epoch"] == 2 and state[ckpt.LOADER]["samples_seen"] == 10 * 8
    assert re.search(r"INFO step 5/40 \(epoch 0\): loss_d [\d.]+ loss_g [\d.]+ D\(x\) [\d.]+ D\(G\(z\)\) [\d.]+, \d+ img/s", (straight / "train.log").read_text())


def test_tensorboard_event_files_hold_the_curves_and_samples(straight: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(straight / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss_d")] == list(range(5, STEPS + 1, 5))
    assert {"train/loss_g", "train/d_real", "train/images_per_s", "train/lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Images("samples")][:2] == [10, 15]


@pytest.mark.multiproc
def test_sigterm_checkpoints_exits_75_and_resume_is_exact(tiny_shards: Path, straight: Path, tmp_path: Path) -> None:
    run = tmp_path / "sigterm"
    proc = subprocess.Popen([PYTHON, "-m", "shardgan.train", *train_args(tiny_shards, run)], env=ENV, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: checkpoint_exists(run, 5), proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, stderr
    stopped_at = newest_step(run)
    assert 5 < stopped_at < STEPS, "the signal should stop the run mid-way with a checkpoint"
    assert f"stopped by SIGTERM at step {stopped_at} with a checkpoint; run `python -m shardgan.train " in stderr
    assert "\r" not in stderr and "img/s" in stderr  # not a terminal: plain log lines, no progress-bar redraws
    assert train_inprocess(tiny_shards, run) == 0
    assert_same_final(straight, run)
    resumed, reference = read_metrics(run / "metrics.jsonl"), read_metrics(straight / "metrics.jsonl")
    assert len(resumed) == len(reference)  # nothing missing at the end, nothing logged twice
    assert [{**r, "images_per_s": 0} for r in resumed] == [{**r, "images_per_s": 0} for r in reference]


@pytest.mark.multiproc
def test_kill9_after_checkpoint_and_resume_is_exact(tiny_shards: Path, straight: Path, tmp_path: Path) -> None:
    run = tmp_path / "kill9"
    proc = subprocess.Popen([PYTHON, "-m", "shardgan.train", *train_args(tiny_shards, run)], env=ENV, stderr=subprocess.DEVNULL)
    wait_for(lambda: checkpoint_exists(run, 10), proc)
    proc.kill()
    proc.wait()
    assert newest_step(run) < STEPS
    assert train_inprocess(tiny_shards, run) == 0
    assert_same_final(straight, run)


def test_corrupt_newest_checkpoint_resumes_from_previous(tiny_shards: Path, straight: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "corrupt"
    shutil.copytree(straight, run)
    bad = run / "checkpoints" / "step_00000040.pt"
    bad.write_bytes(bad.read_bytes()[:1000])  # truncated
    assert train_inprocess(tiny_shards, run) == 0
    assert f"skipping checkpoint {bad}" in capsys.readouterr().err
    assert_same_final(straight, run)  # redid 35 -> 40 from the previous checkpoint


def test_resume_refuses_inexact_config_change(tiny_shards: Path, straight: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "changed"
    err = refused_resume(tiny_shards, straight, run, capsys, "data.batch_size=4")
    assert err.startswith("error: resuming") and "data.batch_size (8 -> 4)" in err and "--allow-config-change" in err
    assert train_inprocess(tiny_shards, run, "data.batch_size=4", "train.max_steps=50", "--allow-config-change") == 0
    assert newest(run)[ckpt.STEP] == 50


@pytest.mark.multiproc
@pytest.mark.slow
def test_ddp_sigterm_one_rank_stops_all_and_resume_is_exact(tiny_shards: Path, straight_ddp: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp_sigterm"
    proc = subprocess.Popen(torchrun_args(tiny_shards, run), env=ENV, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: checkpoint_exists(run, 5), proc)
    os.kill(worker_pids(proc.pid)[1], signal.SIGTERM)  # only rank 1 is told: rank 0 must follow
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "exitcode  : 75" in stderr, stderr[-3000:]  # torchrun reports the stopped workers
    assert 5 < newest_step(run) < STEPS
    done = subprocess.run(torchrun_args(tiny_shards, run), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr
    assert_same_final(straight_ddp, run)
    assert newest(straight_ddp)[ckpt.WORLD_SIZE] == 2


def test_cli_train_dry_run_and_generate(straight: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shardgan.cli import app

    runner = CliRunner()
    dry = runner.invoke(app, ["train", "--config", str(CONFIG), "--dry-run", "data.batch_size=3", "--run-name", "x"])
    assert dry.exit_code == 0, dry.output
    assert "batch_size = 3" in dry.output and 'name = "x"' in dry.output
    made = runner.invoke(app, ["generate", str(straight), "-n", "4", "--seed", "1", "--out", str(tmp_path)])
    assert made.exit_code == 0, made.output
    assert f"step{STEPS:08d}_seed1_grid.png (generator of step {STEPS})" in made.output
    assert (tmp_path / f"step{STEPS:08d}_seed1_grid.png").exists()


def test_adaptive_augmentation_state_is_checkpointed_per_rank_and_moves_p(straight: Path) -> None:
    from shardgan.resume import AUGMENT_STATE

    (state,) = newest(straight)[AUGMENT_STATE]  # one rank
    records = read_metrics(straight / "metrics.jsonl")
    assert abs(records[0]["augment_p"] - 0.5) == pytest.approx(4 * 8 / 2000)  # from augment.probability, one update (step 4) by 32/2000
    assert len({r["augment_p"] for r in records}) > 2, "ADA should move p during the run"
    assert state["count"] == (STEPS % 4) * 8  # mid-interval sums are saved (interval 4, batch 8)
    assert 0.0 <= state["p"] <= 1.0


@pytest.mark.gpu
def test_a_cuda_run_checkpoints_what_a_cpu_generates_from(tiny_shards: Path, tmp_path: Path) -> None:
    """bf16 autocast, channels_last and fused Adam on CUDA; the checkpoint holds the CUDA RNG state
    and loads anywhere (map_location cpu)."""
    from shardgan.generate import generate

    run = tmp_path / "cuda"
    assert train_inprocess(tiny_shards, run, "train.device=cuda", "train.max_steps=10") == 0
    state = newest(run)
    assert state[ckpt.STEP] == 10 and state[ckpt.RNG][0]["cuda"] is not None
    assert all(r["loss_d"] == r["loss_d"] for r in read_metrics(run / "metrics.jsonl"))  # no NaN logged
    step, paths = generate(run, num_images=4, out=tmp_path / "generated")
    assert step == 10 and paths[0].exists()
