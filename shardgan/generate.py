"""`shardgan generate RUN_DIR`: images from a run's EMA generator (what the original project's inference script did)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt
from .configfile import config_from_dict
from .errors import CheckpointError
from .models import Generator, choose_layout
from .rundir import RunDir, read_metrics
from .viz import save_grid


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint of a run, with the SWD training logged at its step (None: not evaluated there)."""

    path: Path
    step: int
    swd: float | None

    def __str__(self) -> str:
        swd = f"logged SWD {self.swd:.2f}" if self.swd is not None else "no SWD logged"
        return f"{self.path} (step {self.step}, {swd})"


def checkpoint_info(run: RunDir, path: Path, step: int) -> CheckpointInfo:
    swd = [r["swd"] for r in read_metrics(run.metrics) if r.get("step") == step and "swd" in r]
    return CheckpointInfo(path, step, swd[-1] if swd else None)


def best_checkpoint(run: RunDir) -> CheckpointInfo | None:
    """checkpoints/best/'s checkpoint: the lowest SWD training logged (None before any evaluation)."""
    found = ckpt.newest_complete(run.best_checkpoints)
    return checkpoint_info(run, found[1], found[0]) if found else None


def newest_checkpoint(run: RunDir) -> CheckpointInfo | None:
    found = ckpt.newest_complete(run.checkpoints)
    return checkpoint_info(run, found[1], found[0]) if found else None


@dataclass(frozen=True)
class Chosen:
    """The checkpoint a command uses, and checkpoints/best/'s when that one is not used and scored lower."""

    used: CheckpointInfo
    better: CheckpointInfo | None

    def describe(self) -> str:
        line = f"using {self.used}"
        if self.better is not None:
            line += f"; the best checkpoint is {self.better}: --best uses it"
        return line


def choose_checkpoint(run: RunDir, checkpoint: Path | None, best: bool) -> tuple[dict, Chosen]:
    """What generate and eval use: `checkpoint` if given, else with `best` checkpoints/best/'s,
    else the newest valid one (not best/'s by default: docs/collapse.md says why); loaded."""
    if not run.root.is_dir():
        raise CheckpointError(f"run directory not found: {run.root}")
    if best and checkpoint is None and ckpt.newest_complete(run.best_checkpoints) is None:
        raise CheckpointError(f"no checkpoint in {run.best_checkpoints} (it holds the lowest-SWD one once the run has evaluated)")
    state, path = ckpt.load_given_or_newest(run.best_checkpoints if best else run.checkpoints, checkpoint)
    used = checkpoint_info(run, path, state[ckpt.STEP])
    candidate = best_checkpoint(run)
    better = candidate if candidate is not None and candidate.step != used.step and _lower(candidate.swd, used.swd) else None
    return state, Chosen(used, better)


def _lower(swd: float | None, than: float | None) -> bool:
    """A best/ checkpoint beats one without a logged SWD (best/ only holds an evaluated one)."""
    return swd is not None and (than is None or swd < than)


def checkpoint_lines(run: RunDir) -> list[str]:
    """A run's last log lines: its newest checkpoint and its best, each with its logged SWD."""
    newest, best = newest_checkpoint(run), best_checkpoint(run)
    lines = [f"newest checkpoint: {newest}"] if newest is not None else []
    if best is None:
        return [*lines, "best checkpoint: none (no evaluation; set eval.every_steps and pack with --val)"]
    use = "the newest is the best" if newest is not None and newest.step == best.step else "shardgan generate/eval --best use it"
    return [*lines, f"best checkpoint: {best}; {use}"]


def generator_from_state(state: dict) -> Generator:
    """The EMA generator of a checkpoint (G if the run kept no EMA), in eval mode."""
    cfg = config_from_dict(state[ckpt.CONFIG]).model
    gen = Generator(cfg, choose_layout(cfg.width, cfg.height))
    gen.load_state_dict(state[ckpt.EMA] if state[ckpt.EMA] is not None else state[ckpt.G])
    return gen.eval()


GEN_BATCH = 128
"""Latents per forward pass when generating many images."""


@torch.no_grad()
def generate_images(generator: nn.Module, num_images: int, nz: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """`num_images` samples from fixed noise (same seed, same latents), in eval mode: (N, C, H, W) in [-1, 1]."""
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(num_images, nz, 1, 1, generator=rng)
    was_training = generator.training
    generator.eval()
    try:
        return torch.cat([generator(chunk.to(device)).float().cpu() for chunk in z.split(GEN_BATCH)])
    finally:
        generator.train(was_training)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latent vectors a and b (nz,) at fractions t (n,) -> (n, nz)."""
    omega = torch.arccos((a / a.norm() * b / b.norm()).sum().clamp(-1, 1))
    so = torch.sin(omega)
    if so.abs() < 1e-6:
        return torch.lerp(a[None], b[None], t[:, None])
    return (torch.sin((1 - t) * omega)[:, None] * a + torch.sin(t * omega)[:, None] * b) / so


def generate(
    run_root: Path,
    *,
    num_images: int = 64,
    seed: int = 0,
    grid: bool = True,
    interpolate: int = 0,
    checkpoint: Path | None = None,
    out: Path | None = None,
    best: bool = False,
) -> tuple[Chosen, list[Path]]:
    """Write `num_images` images (one grid PNG, or one PNG each) or, with `interpolate=n`, an n-image
    latent walk strip; same seed, same images. Names carry the step, so grids of later checkpoints
    never replace earlier ones. Returns the checkpoint used (see choose_checkpoint) and the written paths."""
    run = RunDir(Path(run_root))
    state, chosen = choose_checkpoint(run, checkpoint, best)
    gen, step = generator_from_state(state), state[ckpt.STEP]
    out = out or run.generated
    rng = torch.Generator().manual_seed(seed)
    nz = gen.main[0].in_channels
    if interpolate:
        ends = torch.randn(2, nz, generator=rng)
        z = slerp(ends[0], ends[1], torch.linspace(0, 1, interpolate))
    else:
        z = torch.randn(num_images, nz, generator=rng)
    with torch.no_grad():
        images = gen(z[:, :, None, None])  # (N, C, H, W) in [-1, 1]
    name = f"step{step:08d}_seed{seed}"
    if interpolate:
        return chosen, [save_grid(images, out / f"{name}_interpolate.png", nrow=interpolate)]
    if grid:
        return chosen, [save_grid(images, out / f"{name}_grid.png")]
    return chosen, [save_grid(img[None], out / f"{name}_{i:04d}.png", nrow=1) for i, img in enumerate(images)]
