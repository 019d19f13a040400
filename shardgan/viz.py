"""Pictures people would rather look at than read: image grids and metric curves, as PNGs."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save a (B, C, H, W) batch as one grid PNG; uint8 in [0, 255] or float in [-1, 1]."""
    images = images.detach().cpu()
    images = images.float() / 255.0 if images.dtype == torch.uint8 else (images.float() + 1) / 2
    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    save_image(make_grid(images.clamp(0, 1), nrow=nrow, padding=2), tmp)
    tmp.replace(path)
    return path
