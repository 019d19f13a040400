"""What is trained: G, D, their EMA and optimizers, the fixed sample noise, and the derived
generators every random draw of a step comes from (so no draw depends on history)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .augment import DiffAugment, build_diff_augment
from .config import Config
from .distributed import DistInfo
from .errors import ConfigError
from .loader import ShardLoader
from .models import EMA, build_models

NOISE, AUGMENT, FIXED_NOISE, DIFF_AUGMENT, STATS_NOISE = 0, 1, 2, 3, 4
"""Streams of the derived generators: per-step latent noise, per-step augmentation of the reals,
the fixed sample noise (drawn once, as rank 0 at step 0), per-step augmentation in front of D,
the noise the EMA generator's BatchNorm statistics are computed from (drawn once)."""
NUM_FIXED_NOISE = 64
NUM_STATS_NOISE = 512


def derived_generator(seed: int, rank: int, step: int, stream: int, *, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of (train.seed, rank, step, stream). On the training device, so per-step
    draws need no host-to-device copies.

    Always the full key: SeedSequence pads a short key with zeros, so (seed, 2) would be the
    state of (seed, rank 2, step 0, NOISE); with four words, streams never share a state."""
    state = np.random.SeedSequence([seed, rank, step, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state >> np.uint64(1)))


CHECKED = ("loss_d", "loss_g", "r1", "r2")
"""The step's losses that must be finite: the adversarial ones and the penalties (when computed)."""


@dataclass
class Trainer:
    """What is trained and how it is run: raw modules (state dicts), and their run-time wrappers."""

    cfg: Config
    world: DistInfo
    """This process's rank, the world size and the device."""
    g: nn.Module
    d: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: EMA | None
    fixed_noise: torch.Tensor
    diff_augment: DiffAugment | None
    """Augmentation in front of D (reals and fakes alike); None without diffaugment.policy."""
    g_run: nn.Module = field(init=False)
    """G as trained: compiled and/or DDP-wrapped."""
    d_run: nn.Module = field(init=False)
    """D for the D step (DDP-wrapped: its gradients are all-reduced)."""
    d_frozen: nn.Module = field(init=False)
    """D for the G step without DDP: only G's gradients are needed there."""
    step: int = 0

    @property
    def device(self) -> torch.device:
        return self.world.device

    @property
    def sampler(self) -> nn.Module:
        return self.ema.averaged if self.ema is not None else self.g

    @property
    def memory_format(self) -> torch.memory_format:
        return memory_format(self.cfg, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        precision = self.cfg.train.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def wrap(self) -> None:
        """DDP-wrap, then compile, after restoring, so every rank starts from the same loaded state.
        Compiling the DDP module (torch's documented order) lets dynamo split the graph at DDP's
        buckets, so the gradient all-reduce overlaps the compiled backward pass."""
        g, d = self.g, self.d
        d_frozen = d
        if self.world.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # broadcast_buffers: every forward starts from rank 0's BN buffers, so all ranks hold
            # the same state and a checkpoint of rank 0 is the state of all.
            g, d = DDP(g, device_ids=ids), DDP(d, device_ids=ids)
        if self.cfg.train.compile:
            g, d, d_frozen = torch.compile(g), torch.compile(d), torch.compile(d_frozen)
        self.g_run, self.d_run, self.d_frozen = g, d, d_frozen


def memory_format(cfg: Config, device: torch.device) -> torch.memory_format:
    """channels_last on CUDA when configured (on CPU it only slows the convolutions)."""
    return torch.channels_last if cfg.train.channels_last and device.type == "cuda" else torch.contiguous_format


def choose_kernels(deterministic: bool, device: torch.device) -> None:
    """On CUDA, the fastest kernels (cudnn picks per shape once, TF32 convolutions) or, with
    train.deterministic, only deterministic ones in full fp32, so the same inputs give the same
    bits run after run. Before any CUDA work: cuBLAS reads its workspace setting at start-up."""
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(deterministic)


def build_trainer(cfg: Config, world: DistInfo) -> Trainer:
    group = cfg.model.minibatch_std
    if group and cfg.data.batch_size % group:
        raise ConfigError(f"model.minibatch_std={group} must divide data.batch_size={cfg.data.batch_size} (each rank's batch is cut into groups)")
    choose_kernels(cfg.train.deterministic, world.device)
    g, d = build_models(cfg.model, cfg.train.seed)
    fmt = memory_format(cfg, world.device)
    g, d = g.to(world.device, memory_format=fmt), d.to(world.device, memory_format=fmt)
    adam = {"betas": (cfg.optim.beta1, cfg.optim.beta2), "fused": world.device.type == "cuda"}
    fixed = torch.randn(NUM_FIXED_NOISE, cfg.model.nz, 1, 1, generator=derived_generator(cfg.train.seed, 0, 0, FIXED_NOISE))
    stats_noise = torch.randn(NUM_STATS_NOISE, cfg.model.nz, 1, 1, generator=derived_generator(cfg.train.seed, 0, 0, STATS_NOISE))
    return Trainer(
        cfg=cfg,
        world=world,
        g=g,
        d=d,
        opt_g=torch.optim.Adam(g.parameters(), lr=cfg.optim.lr_g, **adam),
        opt_d=torch.optim.Adam(d.parameters(), lr=cfg.optim.lr_d, **adam),
        ema=EMA(g, cfg.train.ema_decay, stats_noise) if cfg.train.ema_decay > 0 else None,
        fixed_noise=fixed,
        diff_augment=build_diff_augment(cfg.diffaugment),
    )


def open_loader(cfg: Config, world: DistInfo) -> ShardLoader:
    """The loader, after checking the shards hold images of the model's size."""
    loader = ShardLoader(cfg.data, rank=world.rank, world_size=world.world_size, nodes=world.nodes, device=world.device)
    m = loader.manifest
    if (m.width, m.height, m.channels) != (cfg.model.width, cfg.model.height, cfg.model.channels):
        raise ConfigError(
            f"model is {cfg.model.width}x{cfg.model.height}x{cfg.model.channels} but the shards in {cfg.data.shards} "
            f"are {m.width}x{m.height}x{m.channels}; set model.width/height/channels to match"
        )
    return loader


def total_steps(cfg: Config, loader: ShardLoader) -> int:
    return cfg.train.max_steps or cfg.train.epochs * loader.batches_per_epoch
