"""DCGAN training: `torchrun -m shardgan.train`, `python -m shardgan.train` and `shardgan train`.

The loop reads like the algorithm: build -> restore -> while step < total: D step, G step,
EMA, hooks (agree, log, samples, checkpoint) -> close. Exact resume rests on three things:
every random draw of a step comes from generators seeded by (train.seed, rank, step); the
loader position is one counter in the checkpoint; everything else (weights, optimizer
moments, BN buffers, global RNG states of every rank) is saved. A run killed and resumed
therefore ends with the same bits as one that was never interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import checkpoint as ckpt
from . import distributed as D
from .augment import augment
from .config import Config, config_from_dict, load_config, to_toml
from .errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, ShardganError
from .loader import ShardLoader
from .losses import LOSSES
from .models import EMA, build_models, count_params
from .quality import Evaluator
from .rundir import RunDir, append_metrics, read_metrics, run_dir, truncate_metrics
from .viz import save_curve, save_grid, save_loss_curve

log = logging.getLogger("shardgan")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
NOISE, AUGMENT, FIXED_NOISE = 0, 1, 2
"""Streams of the derived generators: per-step latent noise, per-step augmentation, sample noise."""
NUM_FIXED_NOISE = 64
EXACT_KEYS = (("data", "batch_size"), ("data", "seed"), ("train", "seed"), ("model", "width"), ("model", "height"), ("model", "channels"))
"""Settings a resumed run must share with its checkpoint to continue bit-exactly."""
ARCH_KEYS = (("model", "nz"), ("model", "ngf"), ("model", "ndf"), ("model", "spectral_norm"))
"""Settings the saved weights cannot be loaded without."""


def derived_generator(seed: int, *key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for (seed, *key), e.g. (train.seed, rank, step, stream): no draw depends on
    history. On the training device, so per-step draws need no host-to-device copies."""
    state = np.random.SeedSequence([seed, *key]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state >> np.uint64(1)))


@dataclass
class Trainer:
    """What is trained and how it is run: raw modules (state dicts), and their run-time wrappers."""

    cfg: Config
    dist: D.DistInfo
    g: nn.Module
    d: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: EMA | None
    fixed_noise: torch.Tensor
    g_run: nn.Module = field(init=False)
    """G as trained: compiled and/or DDP-wrapped."""
    d_run: nn.Module = field(init=False)
    """D for the D step (DDP-wrapped: its gradients are all-reduced)."""
    d_frozen: nn.Module = field(init=False)
    """D for the G step without DDP: only G's gradients are needed there."""
    finite: FiniteCheck = field(init=False)
    evaluator: Evaluator | None = None
    """Rank 0's SWD reference on the val split (quality.py); None on other ranks or without a val split."""
    step: int = 0

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def sampler(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.g

    def autocast(self) -> contextlib.AbstractContextManager:
        precision = self.cfg.train.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def wrap(self) -> None:
        """Compile and DDP-wrap after restoring, so every rank starts from the same loaded state."""
        g, d = self.g, self.d
        if self.cfg.train.compile:
            g, d = torch.compile(g), torch.compile(d)
        self.d_frozen = d
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # broadcast_buffers: every forward starts from rank 0's BN buffers, so all ranks hold
            # the same state and a checkpoint of rank 0 is the state of all.
            g, d = DDP(g, device_ids=ids), DDP(d, device_ids=ids)
        self.g_run, self.d_run = g, d
        self.finite = FiniteCheck(lagged=self.device.type == "cuda")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv kernels once


# -- build ------------------------------------------------------------------------------------


def build_trainer(cfg: Config, dist: D.DistInfo) -> Trainer:
    g, d = build_models(cfg.model, cfg.train.seed)
    fmt = torch.channels_last if cfg.train.channels_last and dist.device.type == "cuda" else torch.contiguous_format
    g, d = g.to(dist.device, memory_format=fmt), d.to(dist.device, memory_format=fmt)
    adam = {"betas": (cfg.optim.beta1, cfg.optim.beta2), "fused": dist.device.type == "cuda"}
    fixed = torch.randn(NUM_FIXED_NOISE, cfg.model.nz, 1, 1, generator=derived_generator(cfg.train.seed, FIXED_NOISE))
    return Trainer(
        cfg=cfg,
        dist=dist,
        g=g,
        d=d,
        opt_g=torch.optim.Adam(g.parameters(), lr=cfg.optim.lr_g, **adam),
        opt_d=torch.optim.Adam(d.parameters(), lr=cfg.optim.lr_d, **adam),
        ema=EMA(g, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None,
        fixed_noise=fixed,
    )


def open_loader(cfg: Config, dist: D.DistInfo) -> ShardLoader:
    """The loader, after checking the shards hold images of the model's size."""
    loader = ShardLoader(cfg.data, rank=dist.rank, world_size=dist.world_size)
    m = loader.manifest
    if (m.width, m.height, m.channels) != (cfg.model.width, cfg.model.height, cfg.model.channels):
        raise ConfigError(
            f"model is {cfg.model.width}x{cfg.model.height}x{cfg.model.channels} but the shards in {cfg.data.shards} "
            f"are {m.width}x{m.height}x{m.channels}; set model.width/height/channels to match"
        )
    if loader.batches_per_epoch == 0:
        raise DataError(
            f"data.batch_size={cfg.data.batch_size} x {dist.world_size} rank(s) is larger than the "
            f"{m.split(cfg.data.split).num_samples} samples of split {cfg.data.split!r} in {cfg.data.shards}"
        )
    return loader


def total_steps(cfg: Config, loader: ShardLoader) -> int:
    return cfg.train.max_steps or cfg.train.epochs * loader.batches_per_epoch


# -- checkpoint state -------------------------------------------------------------------------


def state_dict(t: Trainer, loader: ShardLoader) -> dict[str, Any]:
    """The whole state under named keys; collective (gathers every rank's RNG states)."""
    rng = D.gather_to_main(ckpt.capture_rng(t.device))
    return {
        ckpt.G: t.g.state_dict(),
        ckpt.D: t.d.state_dict(),
        ckpt.EMA: t.ema.model.state_dict() if t.ema is not None else None,
        ckpt.OPT_G: t.opt_g.state_dict(),
        ckpt.OPT_D: t.opt_d.state_dict(),
        ckpt.SCALER: None,  # bf16 autocast needs no GradScaler
        ckpt.STEP: t.step,
        ckpt.EPOCH: loader.epoch,
        ckpt.WORLD_SIZE: t.dist.world_size,
        ckpt.LOADER: loader.state_dict(),
        ckpt.RNG: rng,
        ckpt.CONFIG: t.cfg.to_dict(),
        ckpt.FIXED_NOISE: t.fixed_noise,
    }


def save_checkpoint(t: Trainer, loader: ShardLoader, rd: RunDir, *, best: bool = False) -> None:
    """Rank 0 writes; all ranks learn whether it worked, so a failed write stops every rank.

    `best`: into checkpoints/best/, keeping only that one (the lowest SWD so far)."""
    state = state_dict(t, loader)
    error = ""
    if t.dist.is_main:
        try:
            directory, keep = (rd.best_checkpoints, 1) if best else (rd.checkpoints, t.cfg.checkpoint.keep_last)
            path = ckpt.save(directory, t.step, state, keep)
            log.info("checkpoint %s", path)
        except CheckpointError as e:
            error = str(e)
    if not D.agree_all(not error, t.device):
        raise CheckpointError(error or "checkpoint write failed on rank 0 (see its log)")


def check_resume(saved: Config, cfg: Config, saved_world: int, world: int, path: Path) -> None:
    """Refuse resumes that cannot load, or cannot be exact unless checkpoint.allow_config_change."""
    old, new = saved.to_dict(), cfg.to_dict()
    arch = [f"{s}.{k} ({old[s][k]} -> {new[s][k]})" for s, k in ARCH_KEYS if old[s][k] != new[s][k]]
    if arch:
        raise CheckpointError(f"{path} was trained with other model settings: {', '.join(arch)}")
    changed = [f"{s}.{k} ({old[s][k]} -> {new[s][k]})" for s, k in EXACT_KEYS if old[s][k] != new[s][k]]
    if saved_world != world:
        changed.append(f"world size ({saved_world} -> {world})")
    if not changed:
        return
    message = f"resuming {path} with changed {', '.join(changed)}"
    if not cfg.checkpoint.allow_config_change:
        raise CheckpointError(f"{message} breaks exact resume; pass --allow-config-change to continue anyway")
    log.warning("%s: allowed by checkpoint.allow_config_change, resume is not exact", message)


def find_checkpoint(cfg: Config, rd: RunDir) -> tuple[dict[str, Any], Path] | None:
    mode = cfg.checkpoint.resume
    if mode == "never":
        if ckpt.list_checkpoints(rd.checkpoints) if rd.checkpoints.is_dir() else []:
            raise CheckpointError(f"checkpoint.resume=never but {rd.checkpoints} holds checkpoints; choose another run.name")
        return None
    if mode == "auto":
        return ckpt.load_newest(rd.checkpoints)
    return ckpt.load_file(Path(mode)), Path(mode)


def restore(t: Trainer, loader: ShardLoader, state: dict[str, Any], path: Path) -> None:
    check_resume(config_from_dict(state[ckpt.CONFIG], str(path)), t.cfg, state[ckpt.WORLD_SIZE], t.dist.world_size, path)
    t.g.load_state_dict(state[ckpt.G])
    t.d.load_state_dict(state[ckpt.D])
    if t.ema is not None:
        t.ema.model.load_state_dict(state[ckpt.EMA] if state[ckpt.EMA] is not None else state[ckpt.G])
    t.opt_g.load_state_dict(state[ckpt.OPT_G])
    t.opt_d.load_state_dict(state[ckpt.OPT_D])
    t.fixed_noise = state[ckpt.FIXED_NOISE]
    t.step = state[ckpt.STEP]
    loader.load_state_dict(state[ckpt.LOADER])
    if len(state[ckpt.RNG]) == t.dist.world_size:
        ckpt.restore_rng(state[ckpt.RNG][t.dist.rank], t.device)
    log.info("resumed from %s at step %d (epoch %d)", path, t.step, loader.epoch)


# -- one step ---------------------------------------------------------------------------------


def train_step(t: Trainer, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """One D step (real -> 1, G(z) -> 0) and one G step (G(z) -> 1) on a uint8 batch."""
    cfg, dist = t.cfg, t.dist
    d_loss, g_loss = LOSSES[cfg.model.loss]
    fmt = torch.channels_last if cfg.train.channels_last and t.device.type == "cuda" else torch.contiguous_format
    aug_rng = derived_generator(cfg.train.seed, dist.rank, t.step, AUGMENT, device=t.device)
    real = augment(images.to(t.device, non_blocking=True), cfg.data, aug_rng).contiguous(memory_format=fmt)  # (B, C, H, W)
    noise_rng = derived_generator(cfg.train.seed, dist.rank, t.step, NOISE, device=t.device)
    z = torch.randn(real.shape[0], cfg.model.nz, 1, 1, generator=noise_rng, device=t.device)  # (B, nz, 1, 1)

    with t.autocast():
        fake = t.g_run(z)  # (B, C, H, W)
        real_logits, fake_logits = t.d_run(real), t.d_run(fake.detach())  # (B,), (B,)
        loss_d = d_loss(real_logits, fake_logits)
    t.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    t.opt_d.step()

    t.d.requires_grad_(False)
    with t.autocast():
        loss_g = g_loss(t.d_frozen(fake))
    t.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    t.opt_g.step()
    t.d.requires_grad_(True)

    if t.ema is not None:
        t.ema.update(t.g)
    return {
        "loss_d": loss_d.detach(),
        "loss_g": loss_g.detach(),
        "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
        "d_fake": torch.sigmoid(fake_logits.detach().float()).mean(),
    }


# -- hooks ------------------------------------------------------------------------------------


@dataclass
class FiniteCheck:
    """Were all losses finite? Read without stalling the GPU: on CUDA the flag of step s is read
    once step s+1 is queued (one step late); `now()` waits for the newest (before a checkpoint)."""

    lagged: bool
    pending: tuple[int, torch.Tensor] | None = None

    def push(self, step: int, stats: dict[str, torch.Tensor]) -> int | None:
        """Record this step's flag; the step of a non-finite loss, if one is known now."""
        flag = ~(torch.isfinite(stats["loss_d"]) & torch.isfinite(stats["loss_g"]))
        ready, self.pending = (self.pending, (step, flag)) if self.lagged else ((step, flag), None)
        return ready[0] if ready is not None and bool(ready[1]) else None

    def now(self) -> int | None:
        ready, self.pending = self.pending, None
        return ready[0] if ready is not None and bool(ready[1]) else None


class StopFlag:
    """Set by SIGTERM/SIGINT/SIGUSR1 (preemption); the loop stops at the next step boundary.

    A second SIGINT interrupts at once, for a user who really means it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, handler)


def save_samples(t: Trainer, path: Path) -> None:
    """Grid from the fixed noise through the EMA generator (or G), in eval mode: no state changes."""
    model = t.sampler
    was_training = model.training
    model.eval()
    with torch.no_grad(), t.autocast():
        images = model(t.fixed_noise.to(t.device))
    model.train(was_training)
    save_grid(images.float(), path, nrow=8)


def build_evaluator(t: Trainer, loader: ShardLoader) -> Evaluator | None:
    """Rank 0's SWD reference on the val split (None elsewhere, or without a val split); a failure
    to build it (e.g. a missing eval.fid_weights file) stops every rank."""
    val = loader.manifest.splits.get("val")
    if not val or not val.shards:
        if t.dist.is_main:
            log.warning("no val split in %s: SWD evaluation is skipped (pack with --val to get one)", t.cfg.data.shards)
        return None
    evaluator, error = None, ""
    if t.dist.is_main:
        try:
            evaluator = Evaluator.build(t.cfg, t.device)
        except ShardganError as e:
            error = str(e)
    if not D.agree_all(not error, t.device):
        raise ConfigError(error or "evaluation set-up failed on rank 0 (see its log)")
    return evaluator


def evaluate(t: Trainer, loader: ShardLoader, rd: RunDir) -> None:
    """SWD of the sampler on rank 0 (the others wait a few seconds): logged to metrics.jsonl and
    plotted; a new lowest SWD also saves a full checkpoint into checkpoints/best/ (collective)."""
    best = False
    if t.evaluator is not None:
        scores = t.evaluator(t.sampler)
        earlier = [r["swd"] for r in read_metrics(rd.metrics) if "swd" in r and r["step"] < t.step]
        best = not earlier or scores["swd"] < min(earlier)
        append_metrics(rd.metrics, {"step": t.step, **scores})
        save_curve(read_metrics(rd.metrics), ("swd",), rd.swd_curve, "SWD x 1e3 (lower is better)")
        log.info("step %d: swd %.2f%s", t.step, scores["swd"], " (lowest so far)" if best else "")
    if D.broadcast_from_main(best):
        save_checkpoint(t, loader, rd, best=True)


@dataclass
class Meter:
    """Images/s between log lines."""

    images: int = 0
    since: float = field(default_factory=time.perf_counter)

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.images / max(now - self.since, 1e-9)
        self.images, self.since = 0, now
        return rate


def log_metrics(t: Trainer, epoch: int, stats: dict[str, torch.Tensor], meter: Meter, rd: RunDir, bar: tqdm) -> None:
    record = {"step": t.step, "epoch": epoch, **{k: round(v.item(), 6) for k, v in stats.items()}}
    record["images_per_s"] = round(meter.rate(), 1)
    record["lr"] = t.opt_g.param_groups[0]["lr"]
    append_metrics(rd.metrics, record)
    bar.set_postfix(loss_d=f"{record['loss_d']:.3f}", loss_g=f"{record['loss_g']:.3f}")
    log.debug("%s", record)


# -- run directory ----------------------------------------------------------------------------


def prepare_run_dir(t: Trainer, rd: RunDir, resumed_step: int | None) -> None:
    """Config, architecture and log file (rank 0); metrics past a resumed step are dropped."""
    rd.create()
    from .atomic import write_bytes_atomic
    from torchinfo import summary

    write_bytes_atomic(rd.config, to_toml(t.cfg).encode())
    if not rd.architecture.exists():
        import copy

        cfg = t.cfg.model
        g_sum = summary(copy.deepcopy(t.g), input_size=(2, cfg.nz, 1, 1), device=t.device, verbose=0, depth=2)
        d_sum = summary(copy.deepcopy(t.d), input_size=(2, cfg.channels, cfg.height, cfg.width), device=t.device, verbose=0, depth=2)
        text = f"Generator\n{g_sum}\n\nDiscriminator\n{d_sum}\n"
        write_bytes_atomic(rd.architecture, text.encode())
    if resumed_step is not None:
        truncate_metrics(rd.metrics, resumed_step)


@contextlib.contextmanager
def logging_setup(is_main: bool) -> Iterator[Callable[[RunDir], None]]:
    """stderr on every rank (rank > 0: warnings only). On rank 0, records are held in memory until
    the run directory exists (a refused start writes nothing), then they and all later ones go to
    train.log: call the yielded function with the run directory."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    held = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    handlers: list[logging.Handler] = [stream, held] if is_main else [stream]

    def to_file(rd: RunDir) -> None:
        if is_main:
            file = logging.FileHandler(rd.log)
            file.setFormatter(fmt)
            held.setTarget(file)
            held.flush()
            log.removeHandler(held)
            log.addHandler(file)
            handlers.append(file)

    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    level, propagate = log.level, log.propagate
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    try:
        yield to_file
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(level)
        log.propagate = propagate


# -- the loop ---------------------------------------------------------------------------------


def train(cfg: Config) -> RunDir:
    """Build, restore, train to the configured end or a stop signal, checkpoint, close."""
    dist = D.init(cfg.train.device)
    try:
        with logging_setup(dist.is_main) as log_to_file, StopFlag().installed() as stop:
            t = build_trainer(cfg, dist)
            loader = open_loader(cfg, dist)
            rd = run_dir(cfg.run.root, cfg.run.name or D.broadcast_from_main(D.run_id()))
            found = find_checkpoint(cfg, rd)
            if found is not None:
                restore(t, loader, *found)
            if dist.is_main:
                prepare_run_dir(t, rd, t.step if found is not None else None)
                log_to_file(rd)
            log.info(
                "run %s: G %s params, D %s params, %d rank(s) on %s, process group backend %s",
                rd.root, f"{count_params(t.g):,}", f"{count_params(t.d):,}", dist.world_size, dist.device, D.backend(),
            )  # fmt: skip
            t.wrap()
            run_loop(t, loader, rd, stop)
        return rd
    finally:
        D.shutdown()


def run_loop(t: Trainer, loader: ShardLoader, rd: RunDir, stop: StopFlag) -> None:
    cfg = t.cfg
    total = total_steps(cfg, loader)
    global_batch = cfg.data.batch_size * t.dist.world_size
    with tqdm(total=total * global_batch, initial=t.step * global_batch, unit="img", unit_scale=True, disable=not t.dist.is_main, dynamic_ncols=True) as bar:
        meter, last_save, stopped = Meter(), time.monotonic(), False
        t.evaluator = build_evaluator(t, loader)
        while t.step < total and not stopped:
            epoch = loader.epoch
            for batch in loader:
                if t.dist.is_main and not rd.train_batch.exists():
                    save_grid(batch["image"][:64], rd.train_batch)
                stats = train_step(t, batch["image"])
                t.step += 1
                meter.images += global_batch
                bar.update(global_batch)
                stopped, saved = after_step(t, loader, rd, stop, stats, epoch, meter, bar, last_save)
                last_save = time.monotonic() if saved else last_save
                if stopped or t.step == total:
                    break
            else:
                end_of_epoch(t, loader, rd, epoch)
                last_save = time.monotonic()
    if stopped:
        log.info("stopped by signal %s at step %d; checkpoint saved, resume with the same command", stop.signum, t.step)
    if t.dist.is_main:
        save_loss_curve(read_metrics(rd.metrics), rd.loss_curve)


def after_step(
    t: Trainer, loader: ShardLoader, rd: RunDir, stop: StopFlag, stats: dict[str, torch.Tensor], epoch: int, meter: Meter, bar: tqdm, last_save: float
) -> tuple[bool, bool]:
    """Hooks at a step boundary: agree on stop/finite/time (one all-reduce), log, samples, eval,
    checkpoint. Returns (stop now, checkpoint saved)."""
    cfg, is_main = t.cfg, t.dist.is_main
    time_due = cfg.checkpoint.every_minutes > 0 and time.monotonic() - last_save >= 60 * cfg.checkpoint.every_minutes
    bad_step = t.finite.push(t.step, stats)
    stopped, not_finite, time_due = D.agree_any([stop.signum is not None, bad_step is not None, time_due], t.device)
    if not_finite:
        raise_non_finite(t, bad_step, rd)
    if is_main and t.step % cfg.train.log_every_steps == 0:
        log_metrics(t, epoch, stats, meter, rd, bar)
    if is_main and cfg.train.sample_every_steps and t.step % cfg.train.sample_every_steps == 0:
        save_samples(t, rd.sample(t.step))
    if t.step == total_steps(cfg, loader) or (cfg.eval.every_steps and t.step % cfg.eval.every_steps == 0):
        evaluate(t, loader, rd)
    every = cfg.checkpoint.every_steps
    save = stopped or time_due or t.step == total_steps(cfg, loader) or (every > 0 and t.step % every == 0)
    if save:
        bad_step = t.finite.now()  # never save weights a non-finite step produced
        if D.agree_any([bad_step is not None], t.device)[0]:
            raise_non_finite(t, bad_step, rd)
        save_checkpoint(t, loader, rd)
    return stopped, save


def raise_non_finite(t: Trainer, bad_step: int | None, rd: RunDir) -> None:
    where = f"at step {bad_step}" if bad_step is not None else f"on another rank by step {t.step}"
    raise NonFiniteLossError(f"non-finite loss {where}; the run stops and the last good checkpoint in {rd.checkpoints} is kept")


def end_of_epoch(t: Trainer, loader: ShardLoader, rd: RunDir, epoch: int) -> None:
    """Samples each epoch (the seed's fake_epoch_N.png) and, if configured, a checkpoint."""
    log.info("epoch %d done at step %d", epoch, t.step)
    if t.dist.is_main:
        save_samples(t, rd.sample(t.step))
        save_loss_curve(read_metrics(rd.metrics), rd.loss_curve)
    if t.cfg.checkpoint.at_epoch_end:
        save_checkpoint(t, loader, rd)


# -- entry points -----------------------------------------------------------------------------


def launch(config: str | Path | None, overrides: list[str], *, run_name: str | None = None, allow_config_change: bool = False, dry_run: bool = False) -> RunDir | None:
    """Resolve the config (file < overrides < flags) and train; `dry_run` prints it and stops."""
    extra = [f"run.name={run_name}"] if run_name else []
    extra += ["checkpoint.allow_config_change=true"] if allow_config_change else []
    cfg = load_config(config, [*overrides, *extra])
    if dry_run:
        print(to_toml(cfg))
        return None
    return train(cfg)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m shardgan.train", description="Train a DCGAN on shardgan shards (run under torchrun for DDP).")
    p.add_argument("--config", help="TOML config file (e.g. configs/gc7m.toml)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="override any config key, e.g. data.batch_size=256")
    p.add_argument("--run-name", help="run directory name under run.root (default: a random 4-character ID)")
    p.add_argument("--allow-config-change", action="store_true", help="resume even if batch/world/image size changed (not exact)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry for `python -m` and torchrun: user errors print one line and give a non-zero code."""
    args = parse_args(argv)
    try:
        launch(args.config, args.overrides, run_name=args.run_name, allow_config_change=args.allow_config_change, dry_run=args.dry_run)
    except ShardganError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C: the first one asks for a checkpoint and a clean stop
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
