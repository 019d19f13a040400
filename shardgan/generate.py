"""`shardgan generate RUN_DIR`: images from a run's EMA generator (what the seed's inference script did)."""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import config_from_dict
from .models import Generator, plan_layout
from .rundir import RunDir
from .viz import save_grid


def load_generator(run: RunDir, checkpoint: Path | None = None) -> Generator:
    """The EMA generator (G if the run kept no EMA) of `checkpoint` or the run's newest valid one."""
    state, _ = ckpt.load_given_or_newest(run.checkpoints, checkpoint)
    return generator_from_state(state)


def generator_from_state(state: dict) -> Generator:
    cfg = config_from_dict(state[ckpt.CONFIG]).model
    gen = Generator(cfg, plan_layout(cfg.width, cfg.height))
    gen.load_state_dict(state[ckpt.EMA] if state[ckpt.EMA] is not None else state[ckpt.G])
    return gen.eval()


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
) -> list[Path]:
    """Write `num_images` images (one grid PNG, or one PNG each) or, with `interpolate=n`, an n-image
    latent walk strip; same seed, same images. Returns the written paths."""
    run = RunDir(Path(run_root))
    gen = load_generator(run, checkpoint)
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
    if interpolate:
        return [save_grid(images, out / f"interpolate_seed{seed}.png", nrow=interpolate)]
    if grid:
        return [save_grid(images, out / f"grid_seed{seed}.png")]
    return [save_grid(img[None], out / f"seed{seed}_{i:04d}.png", nrow=1) for i, img in enumerate(images)]
