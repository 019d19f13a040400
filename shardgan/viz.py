"""Pictures people would rather look at than read: image grids and metric curves, as PNGs."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from .atomic import atomic_write
from .pixels import to_unit


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save a (B, C, H, W) batch as one grid PNG; uint8 in [0, 255] or float in [-1, 1]."""
    images = to_unit(images.detach().cpu())
    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        save_image(make_grid(images.clamp(0, 1), nrow=nrow, padding=2), f, format="png")
    return path


def save_loss_curve(records: list[dict], path: str | Path) -> Path:
    """Plot loss_d and loss_g against step from metrics.jsonl records (the original project's collapse shows here)."""
    return save_curve(records, ("loss_d", "loss_g"), path, "loss")


def save_curve(records: list[dict], keys: tuple[str, ...], path: str | Path, ylabel: str) -> Path:
    """Plot each key against step, from the records that have it (metrics.jsonl mixes loss and SWD lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    for key in keys:
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=key, linewidth=1, marker="." if len(points) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    path = Path(path)
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)
    return path
