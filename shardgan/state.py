"""The training state: G, D, their EMA and optimizers, the fixed sample noise, the step, and
the run-time forms of G and D the step calls (DDP-wrapped and/or compiled)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .augment import DiffAugment, build_diff_augment
from .config import Config
from .distributed import DistInfo
from .errors import ConfigError
from .loader import ShardLoader
from .models import EMA, build_models
from .rng import FIXED_NOISE, STATS_NOISE, derived_generator

NUM_FIXED_NOISE = 64
NUM_STATS_NOISE = 512


@dataclass
class TrainState:
    """What is trained (raw modules: their state dicts are the checkpoint's) and the forms the
    step runs them in; complete when built (build_state)."""

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
    g_run: nn.Module
    """G as trained: compiled and/or DDP-wrapped."""
    d_run: nn.Module
    """D for the D step (DDP-wrapped: its gradients are all-reduced)."""
    d_local: nn.Module
    """D for the G step, this rank's alone (no DDP: only G's gradients are needed there)."""
    step: int = 0

    @property
    def device(self) -> torch.device:
        return self.world.device

    def sampler(self) -> nn.Module:
        """What samples and evaluations use: the EMA generator (its BatchNorm statistics
        recomputed when stale, see EMA.compute_averaged), or G without an EMA."""
        return self.ema.compute_averaged() if self.ema is not None else self.g

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


def wrap_modules(cfg: Config, world: DistInfo, g: nn.Module, d: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(G, D for the D step, D for the G step) as the step runs them: DDP-wrapped across ranks,
    then compiled. Compiling the DDP module (torch's documented order) lets dynamo split the graph
    at DDP's buckets, so the gradient all-reduce overlaps the compiled backward pass.

    Built before a restore, as torchtitan parallelizes before it loads: DDP starts every rank from
    rank 0's freshly built weights (the same on all, built from train.seed), and a restore then
    loads the same checkpoint into the same parameters on every rank. Compiling is lazy: nothing
    is traced before the first step."""
    d_local = d
    if world.world_size > 1:
        ids = [world.device.index] if world.device.type == "cuda" else None
        # broadcast_buffers: every forward starts from rank 0's BN buffers, so all ranks hold
        # the same state and a checkpoint of rank 0 is the state of all.
        g, d = DDP(g, device_ids=ids), DDP(d, device_ids=ids)
    if cfg.train.compile:
        g, d, d_local = torch.compile(g), torch.compile(d), torch.compile(d_local)
    return g, d, d_local


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


def build_state(cfg: Config, world: DistInfo) -> TrainState:
    """Everything from the seed alone (no global seeding), on the device, ready to restore into."""
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
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.optim.lr_g, **adam)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.optim.lr_d, **adam)
    ema = EMA(g, cfg.train.ema_decay, stats_noise) if cfg.train.ema_decay > 0 else None  # a copy of the raw G
    g_run, d_run, d_local = wrap_modules(cfg, world, g, d)
    return TrainState(
        cfg=cfg,
        world=world,
        g=g,
        d=d,
        opt_g=opt_g,
        opt_d=opt_d,
        ema=ema,
        fixed_noise=fixed,
        diff_augment=build_diff_augment(cfg.diffaugment),
        g_run=g_run,
        d_run=d_run,
        d_local=d_local,
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
