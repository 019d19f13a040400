"""DCGAN training: `torchrun -m shardgan.train`, `python -m shardgan.train` and `shardgan train`.

The loop reads like the algorithm: build -> restore -> while step < total: D step, G step,
EMA, ADA's all-rank update of p, hooks (agree, log, samples, checkpoint) -> close. Exact resume
rests on three things: every random draw of a step comes from generators derived from
(train.seed, rank, step) (rng.py); the
loader position is one counter in the checkpoint; everything else (weights, optimizer
moments, BN buffers, global RNG states of every rank) is saved (resume.py). A run killed and
resumed therefore ends with the same bits as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .stop import EXIT_STOPPED, StopFlag, exit_before_start, launch_command

NO_TRAINING = "interrupted: no training was running"

if __name__ == "__main__":  # before the imports below, else a Ctrl-C in them is a KeyboardInterrupt traceback
    exit_before_start(NO_TRAINING if os.environ.get("RANK", "0") == "0" else "")  # until train() takes the stop
    # signals over: no checkpoint to write yet, so the line (one for all ranks) and 130 at once

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import distributed as dist
from . import resume
from .augment import AugmentParams, augment
from .command import add_train_command, new_app, run_app
from .config import Config
from .configfile import load_config, to_toml
from .generate import checkpoint_lines
from .hooks import Hooks, prepare_run_dir
from .loader import ShardLoader
from .losses import LOSSES, RELATIVISTIC, gradient_penalty
from .models import count_params
from .progress import ProgressLines
from .fidelity import diversity
from .rng import AUGMENT, DIFF_AUGMENT, NOISE, derived_generator
from .rundir import RunDir, logging_setup
from .state import TrainState, build_state, open_loader, total_steps
from .viz import save_loss_curve

log = logging.getLogger("shardgan")


# -- one step ---------------------------------------------------------------------------------


def train_step(t: TrainState, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """One D step and one G step on a uint8 batch, then the EMA; the step's stats, on the device.

    With diffaugment.policy, D sees reals and fakes through the same differentiable augmentation,
    drawn once per step: image i of the reals and image i of the fakes get the same shift,
    cutout and colour change, in the D step and (through G's graph) in the G step."""
    set_learning_rates(t)
    real, z = real_and_noise(t, images)
    view = draw_d_view(t, real.shape)
    d = d_step(t, real, z, view)
    loss_g = g_step(t, real, d.fake_seen, view)
    if t.ema is not None:
        t.ema.update(t.g)
    stats = {
        "loss_d": d.loss_d.detach(),
        "loss_g": loss_g.detach(),
        "d_real": torch.sigmoid(d.real_logits.detach().float()).mean(),
        "d_fake": torch.sigmoid(d.fake_logits.detach().float()).mean(),
        "diversity": diversity(d.fake.detach(), real),  # this batch's; the watchdog reads the evaluations'
        **{k: v.detach() for k, v in d.penalties.items()},
    }
    if t.diff_augment is not None and t.diff_augment.ada is not None:
        stats["augment_p"] = torch.as_tensor(t.diff_augment.p)  # on the device once updated
        t.diff_augment.ada.observe(d.real_logits)  # this rank's signs alone: sync_augment_probability sums them
    return stats


def set_learning_rates(t: TrainState) -> None:
    """optim.decay_steps' schedule at this step (set every step: a restored optimizer's saved lr
    is overwritten, so the step alone decides)."""
    scale = t.cfg.optim.lr_scale(t.step)
    for opt, lr in ((t.opt_g, t.cfg.optim.lr_g), (t.opt_d, t.cfg.optim.lr_d)):
        for group in opt.param_groups:
            group["lr"] = lr * scale


def real_and_noise(t: TrainState, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's reals (on the device, augmented as data.* says) and latents, from its derived generators."""
    cfg, rank = t.cfg, t.world.rank
    aug_rng = derived_generator(cfg.train.seed, rank, t.step, AUGMENT, device=t.device)
    real = augment(images.to(t.device, non_blocking=True), cfg.data, aug_rng).contiguous(memory_format=t.memory_format)  # (B, C, H, W)
    noise_rng = derived_generator(cfg.train.seed, rank, t.step, NOISE, device=t.device)
    z = torch.randn(real.shape[0], cfg.model.nz, 1, 1, generator=noise_rng, device=t.device)  # (B, nz, 1, 1)
    return real, z


def draw_d_view(t: TrainState, shape: torch.Size) -> AugmentParams | None:
    """This step's augmentation in front of D, drawn once for both steps; None without diffaugment.policy."""
    if t.diff_augment is None:
        return None
    rng = derived_generator(t.cfg.train.seed, t.world.rank, t.step, DIFF_AUGMENT, device=t.device)
    return t.diff_augment.draw(shape, rng, t.device)


def seen_by_d(t: TrainState, images: torch.Tensor, view: AugmentParams | None) -> torch.Tensor:
    """`images` as D sees them this step: through `view`, or as they are."""
    return images if view is None else t.diff_augment(images, view)


@dataclass(frozen=True)
class DStep:
    """What the D step computed and the G step and the stats go on from."""

    fake: torch.Tensor
    """G(z), (B, C, H, W), with G's graph: the G step backpropagates through it."""
    fake_seen: torch.Tensor
    """`fake` as D sees it (seen_by_d), graph kept."""
    real_logits: torch.Tensor
    fake_logits: torch.Tensor
    loss_d: torch.Tensor
    penalties: dict[str, torch.Tensor]
    """"r1"/"r2" on the steps they are computed (optim.penalty_every_steps), unscaled."""


def d_step(t: TrainState, real: torch.Tensor, z: torch.Tensor, view: AugmentParams | None) -> DStep:
    """Update D: real -> 1, G(z) -> 0, and with optim.r1_gamma/r2_gamma the gradient penalties on
    the images D saw. Through t.d_run: across ranks, D's gradients are all-reduced."""
    optim, (d_loss, _) = t.cfg.optim, LOSSES[t.cfg.model.loss]
    penalize = (t.step + 1) % optim.penalty_every_steps == 0  # the step counted as t.step + 1: log lines at multiples show them
    r1, r2 = penalize and optim.r1_gamma > 0, penalize and optim.r2_gamma > 0
    with t.autocast():
        fake = t.g_run(z)  # (B, C, H, W)
        fake_seen = seen_by_d(t, fake, view)  # what D judges, in both steps
        real_in, fake_in = seen_by_d(t, real, view).detach().requires_grad_(r1), fake_seen.detach().requires_grad_(r2)
        real_logits, fake_logits = t.d_run(real_in), t.d_run(fake_in)  # (B,), (B,)
    loss_d = d_loss(real_logits.float(), fake_logits.float())  # losses in fp32 under any autocast
    penalties = {}
    if r1:
        penalties["r1"] = gradient_penalty(real_logits, real_in)
    if r2:
        penalties["r2"] = gradient_penalty(fake_logits, fake_in)
    # lazily regularized: every penalty_every_steps-th step, that many times as strong
    scale = optim.gamma_scale(t.step)  # optim.decay_steps' schedule
    gammas = {"r1": optim.r1_gamma * scale, "r2": optim.r2_gamma * scale}
    loss_d_total = loss_d + sum(gammas[k] / 2 * optim.penalty_every_steps * v for k, v in penalties.items())
    t.opt_d.zero_grad(set_to_none=True)
    loss_d_total.backward()
    t.opt_d.step()
    return DStep(fake, fake_seen, real_logits, fake_logits, loss_d, penalties)


def g_step(t: TrainState, real: torch.Tensor, fake_seen: torch.Tensor, view: AugmentParams | None) -> torch.Tensor:
    """Update G: D(fake) -> 1 (relativistic losses: relative to the reals), judged by the D just
    updated, held fixed (no gradients of its own) and run through t.d_local. Returns G's loss."""
    _, g_loss = LOSSES[t.cfg.model.loss]
    t.d.requires_grad_(False)
    with t.autocast():
        with torch.no_grad():  # the reals G's fakes are paired with
            real_ref = t.d_local(seen_by_d(t, real, view)) if t.cfg.model.loss in RELATIVISTIC else None
        fake_logits = t.d_local(fake_seen)  # (B,)
    loss_g = g_loss(fake_logits.float(), None if real_ref is None else real_ref.float())
    t.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    t.opt_g.step()
    t.d.requires_grad_(True)
    return loss_g


def sync_augment_probability(t: TrainState) -> None:
    """ADA, collective at every diffaugment.ada_interval_steps-th step: all-reduce the ranks' signs of
    D(real) and move p, on the device (every rank's batch has the same size, so the count over
    ranks is count x world size). Called after the step is counted."""
    ada = t.diff_augment.ada if t.diff_augment is not None else None
    if ada is not None and t.step % ada.interval_steps == 0:
        ada.update(dist.sum_over_ranks(torch.as_tensor(ada.sign_sum, dtype=torch.float64)), ada.count * t.world.world_size)


# -- the loop ---------------------------------------------------------------------------------


def train(cfg: Config) -> tuple[RunDir, bool]:
    """Build, restore, train to the configured end or a stop signal, checkpoint, close.
    Returns the run directory and whether a signal stopped it before the end."""
    stop = StopFlag()
    with stop.installed():  # before joining the group: a signal from now on stops the run cleanly
        world = dist.init(cfg.train.device, cfg.train.collective_timeout_s, cfg.train.backend)
        try:
            with logging_setup(world.is_main) as log_to_file:
                t = build_state(cfg, world)
                loader = open_loader(cfg, world)
                rd = RunDir(Path(cfg.run.root) / cfg.run.name)
                resume.check_shared(rd, world)
                chosen = resume.load_chosen(t, rd)
                if chosen is not None:
                    resume.restore(t, loader, chosen[1], chosen[0].path)
                if world.is_main:
                    prepare_run_dir(t, rd)
                    if chosen is not None:
                        resume.abandon_after(rd, chosen[0])
                    log_to_file(rd)
                log.info(
                    "run %s: G %s params, D %s params, %d rank(s) on %s, process group backend %s",
                    rd.root, f"{count_params(t.g):,}", f"{count_params(t.d):,}", world.world_size, world.device, dist.backend(),
                )  # fmt: skip
                stopped = run_loop(t, loader, rd, stop)
                if world.is_main:
                    for line in checkpoint_lines(rd):
                        log.info(line)
                if stopped:
                    by = stop.name or "a signal to another rank"
                    log.info("stopped by %s at step %d with a checkpoint; run `%s` again to resume", by, t.step, launch_command())
            return rd, stopped
        finally:
            dist.shutdown()


def run_loop(t: TrainState, loader: ShardLoader, rd: RunDir, stop: StopFlag) -> bool:
    """Train to the end or to a stop all ranks agreed on; True if stopped before the end."""
    total = total_steps(t.cfg, loader)
    if t.step >= total:
        log.info("already at step %d of %d: nothing to train (raise train.epochs or train.max_steps to go on)", t.step, total)
        return False
    global_batch = t.cfg.data.batch_size * t.world.world_size
    interactive = t.world.is_main and sys.stderr.isatty()  # in a job log, plain progress lines instead
    bar = tqdm(total=total * global_batch, initial=t.step * global_batch, unit="img", unit_scale=True, disable=not interactive, dynamic_ncols=True)
    every_s = t.cfg.data.progress_every_s if t.world.is_main and not interactive else 0
    lines = ProgressLines("train", total * global_batch, "img", every_s, log.info, initial=t.step * global_batch)
    hooks = Hooks(t, loader, rd, stop, bar)
    with bar, logging_redirect_tqdm(loggers=[log]), contextlib.closing(hooks):
        stopped = False
        while t.step < total and not stopped:
            epoch = loader.epoch
            for batch in loader:
                hooks.before_step(batch["image"])
                stats = train_step(t, batch["image"])
                t.step += 1
                sync_augment_probability(t)
                bar.update(global_batch)
                lines.update(global_batch)
                stopped = hooks.after_step(stats, epoch)
                if stopped or t.step == total:
                    break
            else:
                hooks.end_of_epoch(epoch)
    if t.world.is_main:
        save_loss_curve(hooks.records, rd.loss_curve)
    return stopped and t.step < total


# -- entry points -----------------------------------------------------------------------------


def launch(config: str | Path | None, overrides: list[str], *, run_name: str | None = None, allow_config_change: bool = False, dry_run: bool = False) -> int:
    """Resolve the config (file < overrides < flags) and train; `dry_run` prints it and stops.
    Returns the exit code: 0 when trained to the end, EXIT_STOPPED when a signal stopped the run."""
    extra = [f"run.name={run_name}"] if run_name else []
    extra += ["checkpoint.allow_config_change=true"] if allow_config_change else []
    cfg = load_config(config, [*overrides, *extra])
    if dry_run:
        print(to_toml(cfg))
        return 0
    _, stopped = train(cfg)
    return EXIT_STOPPED if stopped else 0


def main(argv: list[str] | None = None) -> int:
    """Entry of `python -m shardgan.train` and `torchrun -m shardgan.train`: the `shardgan train`
    command line (the same flags, one-line errors and exit codes), built here without cli."""
    app = new_app()
    add_train_command(app, launch)
    return run_app(app, ["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
