"""Trainer: straight == stopped/killed + resumed (bit-identical), run directory, generate, refusals."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

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


def test_the_last_step_writes_samples_between_multiples_of_sample_every_steps(tiny_shards: Path, tmp_path: Path) -> None:
    """The demo trains 2,500 steps with samples every 200: its final grid must still exist."""
    assert train_inprocess(tiny_shards, tmp_path / "run", "train.max_steps=12", "train.sample_at_epoch_end=false") == 0
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step_000010.png", "step_000012.png"]


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
    assert abs(records[0]["augment_p"] - 0.5) == pytest.approx(4 * 8 / 2000)  # from diffaugment.probability, one update (step 4) by 32/2000
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
    chosen, paths = generate(run, num_images=4, out=tmp_path / "generated")
    assert chosen.used.step == 10 and paths[0].exists()


# -- the relativistic loss and the gradient penalties -------------------------------------------


def rpgan_trainer(r1: float, r2: float, every: int, decay_steps: int = 0, **model):
    """A tiny rpgan trainer on the CPU, no augmentation of any kind (D sees the images as loaded)."""
    from shardgan.distributed import DistInfo
    from shardgan.state import build_state
    from tests.trainer_runs import tiny_config

    cfg = tiny_config(d_batchnorm=False, **model)
    cfg.model.loss = "rpgan"
    cfg.data.translate_px, cfg.data.color_jitter, cfg.data.batch_size = 0, 0.0, 6
    cfg.optim.r1_gamma, cfg.optim.r2_gamma, cfg.optim.penalty_every_steps = r1, r2, every
    cfg.optim.decay_steps = decay_steps
    return build_state(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))


def images_and_noise(t, step: int):
    from shardgan.rng import NOISE, derived_generator

    images = torch.randint(0, 256, (6, 3, 16, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(step))
    z = torch.randn(6, t.cfg.model.nz, 1, 1, generator=derived_generator(t.cfg.train.seed, 0, step, NOISE))
    return images, z


@pytest.mark.parametrize("decay_steps", [0, 8])
def test_the_d_step_adds_gamma_half_times_k_times_each_penalty_on_penalty_steps_only(decay_steps: int) -> None:
    """D's gradient with R1/R2 minus D's gradient without them (same weights, same batch) is
    (gamma / 2) * k * the gradient of the hand-computed penalties, at steps divisible by k;
    with optim.decay_steps, gamma as decayed at that step (step 5 of 8: 1 -> 0.1 by a cosine)."""
    import copy
    import math

    from shardgan.train import train_step

    gamma1, gamma2, k = 0.3, 0.7, 2
    share = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 8)) if decay_steps else 1.0
    for step, penalized in ((5, True), (4, False)):  # t.step 5 is counted as step 6
        with_pen, plain = rpgan_trainer(gamma1, gamma2, k, decay_steps), rpgan_trainer(0.0, 0.0, k, decay_steps)
        with_pen.step = plain.step = step
        d0, g0 = copy.deepcopy(with_pen.d), copy.deepcopy(with_pen.g)
        images, z = images_and_noise(with_pen, step)
        stats = train_step(with_pen, images)
        train_step(plain, images)
        assert ("r1" in stats and "r2" in stats) == penalized
        diff = [a.grad - b.grad for a, b in zip(with_pen.d.parameters(), plain.d.parameters())]
        if not penalized:
            assert all(torch.equal(x, torch.zeros_like(x)) for x in diff)
            continue
        real = (images.float() / 127.5 - 1).requires_grad_(True)
        fake = g0(z).detach().requires_grad_(True)
        r1 = torch.stack([torch.autograd.grad(d0(real)[i], real, create_graph=True)[0][i].square().sum() for i in range(6)]).mean()
        r2 = torch.stack([torch.autograd.grad(d0(fake)[i], fake, create_graph=True)[0][i].square().sum() for i in range(6)]).mean()
        assert stats["r1"].item() == pytest.approx(r1.item(), rel=1e-4) and stats["r2"].item() == pytest.approx(r2.item(), rel=1e-4)
        expected = torch.autograd.grad(share * (gamma1 / 2 * k * r1 + gamma2 / 2 * k * r2), list(d0.parameters()))
        for got, want in zip(diff, expected):
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-7)
        assert any(w.abs().sum() > 0 for w in expected)


def test_rpgan_g_step_pairs_each_fake_with_a_real_judged_by_the_updated_d() -> None:
    import copy

    from shardgan.losses import rpgan_g
    from shardgan.train import train_step

    t = rpgan_trainer(0.1, 0.1, 1, minibatch_std=2)
    g0 = copy.deepcopy(t.g)
    images, z = images_and_noise(t, 0)
    stats = train_step(t, images)
    with torch.no_grad():
        expected = rpgan_g(t.d(g0(z)), t.d(images.float() / 127.5 - 1))  # t.d: D after its step
    assert stats["loss_g"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_decay_steps_sets_both_learning_rates_from_the_step_alone() -> None:
    """A cosine from lr to lr_final * lr over optim.decay_steps, then held; whatever lr a restored
    optimizer carried, the step decides."""
    from shardgan.train import train_step

    t = rpgan_trainer(0.0, 0.0, 1, decay_steps=10)
    lr_g, lr_d = t.cfg.optim.lr_g, t.cfg.optim.lr_d
    seen = {}
    for step in (0, 5, 10, 15):
        t.step = step
        t.opt_g.param_groups[0]["lr"] = t.opt_d.param_groups[0]["lr"] = 123.0  # as if restored from elsewhere
        train_step(t, images_and_noise(t, step)[0])
        seen[step] = (t.opt_g.param_groups[0]["lr"] / lr_g, t.opt_d.param_groups[0]["lr"] / lr_d)
    assert seen[0] == pytest.approx((1.0, 1.0))
    assert seen[5] == pytest.approx((0.625, 0.625))  # halfway down the cosine from 1 to 0.25
    assert seen[10] == seen[15] == pytest.approx((0.25, 0.25))


def test_minibatch_std_must_divide_the_batch() -> None:
    from shardgan.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model.minibatch_std=4 must divide data.batch_size=6"):
        rpgan_trainer(0.0, 0.0, 1, minibatch_std=4)


@pytest.mark.parametrize("model", [["model.d_batchnorm=false"], ["model.d_batchnorm=true", "model.upsample=nearest"]], ids=["r3gan", "demo"])
def test_rpgan_with_lazy_penalties_and_minibatch_std_resumes_exactly(tiny_shards: Path, tmp_path: Path, model: list[str]) -> None:
    """The penalty steps and the decayed learning rates and gammas follow from the step count
    alone: stopped at step 25 (mid-period of 3, mid-decay) and resumed == straight, bit for bit;
    R3GAN's D without BN, and the demo's models (BN in D, G resizing)."""
    from tests.trainer_runs import COMPARED, assert_same_state

    extra = ["model.loss=rpgan", *model, "model.minibatch_std=4", "optim.r1_gamma=0.5", "optim.r2_gamma=0.5", "optim.penalty_every_steps=3", "optim.decay_steps=28"]
    straight, resumed = tmp_path / "straight_rpgan", tmp_path / "resumed_rpgan"
    assert train_inprocess(tiny_shards, straight, *extra, "train.max_steps=30") == 0
    assert train_inprocess(tiny_shards, resumed, *extra, "train.max_steps=25") == 0
    assert train_inprocess(tiny_shards, resumed, *extra, "train.max_steps=30") == 0
    a, b = newest(straight), newest(resumed)
    assert a[ckpt.STEP] == b[ckpt.STEP] == 30
    for key in COMPARED:
        assert_same_state(a[key], b[key], key)
    penalized = [r["step"] for r in read_metrics(straight / "metrics.jsonl") if "r1" in r]
    assert penalized == [15, 30]  # the log lines (every 5) at penalized steps (every 3)


def _ddp_rank(rank: int, port: int, results) -> None:
    """One of two gloo ranks: rpgan with R1 and R2 (double backward through DDP) on its own batches."""
    from shardgan import distributed as dist
    from shardgan.train import train_step
    from shardgan.state import build_state
    from tests.trainer_runs import tiny_config

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = dist.init("cpu")
    try:
        cfg = tiny_config(d_batchnorm=False, minibatch_std=2)
        cfg.model.loss, cfg.optim.r1_gamma, cfg.optim.r2_gamma = "rpgan", 1.0, 1.0
        t = build_state(cfg, world)
        grads = []
        for step in range(3):
            t.step = step
            images = torch.randint(0, 256, (4, 3, 16, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(10 * rank + step))
            stats = train_step(t, images)
            grads.append([p.grad.numpy().copy() for p in t.d.parameters()])
        # numpy, not tensors: a tensor goes through shared memory the exiting rank would take away
        results.put((rank, [p.detach().numpy().copy() for p in t.d.parameters()], grads, float(stats["r1"])))
    finally:
        dist.shutdown()


@pytest.mark.multiproc
def test_ddp_all_reduces_ds_gradient_through_the_penalties_double_backward() -> None:
    """Two real gloo ranks, different batches: D's gradients (penalties included) are all-reduced,
    so both ranks hold the same D after every step."""
    from tests.conftest import spawned_ranks

    ((_, params0, grads0, r1_0), (_, params1, grads1, r1_1)), exitcodes = spawned_ranks(_ddp_rank, timeout=120)
    assert exitcodes == [0, 0]
    assert r1_0 != r1_1  # each rank penalized its own batch
    for step_grads0, step_grads1 in zip(grads0, grads1):
        assert all((a == b).all() and a.any() for a, b in zip(step_grads0, step_grads1))
    assert all((a == b).all() for a, b in zip(params0, params1))


def test_the_last_lines_name_the_newest_and_the_best_checkpoint_with_their_swd(best_is_older: Path, straight: Path) -> None:
    newest, best = best_is_older / "checkpoints" / "step_00000020.pt", best_is_older / "checkpoints" / "best" / "step_00000010.pt"
    last = [line.split(" INFO ", 1)[-1] for line in (best_is_older / "train.log").read_text().splitlines()[-2:]]
    assert last == [
        f"newest checkpoint: {newest} (step 20, logged SWD 60.00)",
        f"best checkpoint: {best} (step 10, logged SWD 30.00); shardgan generate/eval --best use it",
    ]
    no_val = (straight / "train.log").read_text().splitlines()[-1]
    assert no_val.endswith("best checkpoint: none (no evaluation; set eval.every_steps and pack with --val)")


# -- no wait for the device at an ordinary step --------------------------------------------------

DEVICE_READS = ("item", "tolist", "__bool__", "cpu", "numpy")
SHARDGAN_DIR = str(Path(ckpt.__file__).parent)


def _count_device_reads(rank: int, port: int, results, args: list[str]) -> None:
    """One rank of a 2-rank gloo run that records, per step, every call shardgan's own code makes
    that reads a tensor on the host (DEVICE_READS), builds a tensor on a device from Python values
    (torch.tensor with a device) or starts an all-reduce."""
    import sys

    import torch
    import torch.distributed as torch_dist

    from shardgan import train as train_module
    from shardgan.cli import main

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    step, events = [0], []

    def record(kind: str) -> None:
        caller = sys._getframe(2).f_code.co_filename
        if caller.startswith(SHARDGAN_DIR):
            events.append((step[0], kind, Path(caller).name))

    def counting(name: str, real):
        def call(*a, **k):
            record(name if name != "tensor" or k.get("device") is not None else "host tensor")
            return real(*a, **k)

        return call

    for name in DEVICE_READS:
        setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    torch.tensor = counting("tensor", torch.tensor)
    torch_dist.all_reduce = counting("all_reduce", torch_dist.all_reduce)
    real_step = train_module.train_step

    def numbered_step(t, images):
        step[0] = t.step + 1  # the reads of after_step belong to the step just made
        return real_step(t, images)

    train_module.train_step = numbered_step
    code = main(["train", *args])
    results.put((rank, code, events))


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["diffaugment.policy=", "data.color_jitter=0"]], ids=["diffaugment-ada-jitter", "plain"])
def test_an_ordinary_step_reads_the_device_once_and_only_an_earlier_steps_flags(tiny_shards: Path, tmp_path: Path, extra: list[str]) -> None:
    """Two gloo ranks, 20 steps of the tiny preset (DiffAugment, ADA every 4 steps, colour jitter);
    logs, samples and saves every 5 steps (an epoch is 15 steps). At every other step shardgan
    reads exactly one tensor on the host, the agreed flags of the step before (distributed.py's
    LateAgreement), builds no tensor on a device from Python values and starts one all-reduce
    (two at ADA's steps, whose sum stays on the device)."""
    from tests.conftest import spawned_ranks

    args = train_args(tiny_shards, tmp_path / "reads", "data.batch_size=4", "train.max_steps=20", *extra)
    got, _ = spawned_ranks(_count_device_reads, args, timeout=300)
    for rank, code, events in got:
        assert code == 0, rank
        ordinary = [s for s in range(1, 21) if s % 5 != 0]
        for s in ordinary:
            found = sorted((kind, where) for at, kind, where in events if at == s and kind != "host tensor")
            late_read = [("tolist", "distributed.py")] if s % 5 != 1 else []  # none at step 1, nor after a save (read there)
            ada = [("all_reduce", "distributed.py")] if not extra and s % 4 == 0 else []  # ADA's sum, left on the device
            assert found == [("all_reduce", "distributed.py"), *ada, *late_read], (rank, s, found)
        assert any(at % 5 == 0 and kind == "tolist" for at, kind, _ in events)  # the log steps read their stats: the count sees reads
