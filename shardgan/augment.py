"""Batched, on-device augmentation: uint8 frames in, floats in [-1, 1] out.

The seed ran Resize(+2) + RandomCrop + ColorJitter + Normalize per sample in PIL on
the CPU; here the same ops run on whole batches on the training device, and every
random draw comes from an explicit generator so a resumed run draws the same numbers.
"""

from __future__ import annotations

import torch

from .config import DataConfig

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R 601 luma, the weights torchvision's ColorJitter uses."""


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [-1, 1] (the seed's ToTensor + Normalize(0.5, 0.5))."""
    return images.float().div_(127.5).sub_(1.0)


def augment(images: torch.Tensor, cfg: DataConfig, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, C, H, W) on device -> float in [-1, 1]: translate, colour jitter, optional hflip.

    All randomness comes from `generator` (on any device; draws are moved to the images' device).
    """
    x = images.float().div_(255.0)  # (B, C, H, W) in [0, 1]
    if cfg.translate_px > 0:
        x = translate(x, cfg.translate_px, generator)
    if cfg.color_jitter > 0:
        x = color_jitter(x, cfg.color_jitter, generator)
    if cfg.hflip:
        x = hflip(x, generator)
    return x.mul_(2.0).sub_(1.0)


def _uniform(generator: torch.Generator, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    draw = torch.rand(n, generator=generator, device=generator.device)
    return (low + (high - low) * draw).to(device)


def _randint(generator: torch.Generator, n: int, low: int, high: int, device: torch.device) -> torch.Tensor:
    """n integers in [low, high] inclusive."""
    return torch.randint(low, high + 1, (n,), generator=generator, device=generator.device).to(device)


def translate(x: torch.Tensor, max_px: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to max_px in x and y; pixels shifted in repeat the edge.

    Equivalent to the seed's Resize(+2) + RandomCrop for max_px=1, without resampling.
    """
    b, c, h, w = x.shape
    dy = _randint(generator, b, -max_px, max_px, x.device)
    dx = _randint(generator, b, -max_px, max_px, x.device)
    rows = (torch.arange(h, device=x.device)[None, :] - dy[:, None]).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=x.device)[None, :] - dx[:, None]).clamp_(0, w - 1)  # (B, W)
    index = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)  # one gather, not two
    return x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    weights = torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype)
    return (x * weights[None, :, None, None]).sum(1, keepdim=True)


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors each uniform in [1 - s, 1 + s], per image.

    Same blends as torchvision's ColorJitter, in a fixed order; saturation only for RGB.
    Works in place on `x` (a float copy made by the caller).
    """
    b = x.shape[0]
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    brightness, contrast, saturation = (_uniform(generator, b, low, high, x.device)[:, None, None, None] for _ in range(3))
    x.mul_(brightness).clamp_(0.0, 1.0)
    luma = _gray(x) if x.shape[1] == 3 else x
    mean = luma.mean(dim=(1, 2, 3), keepdim=True)
    x = torch.addcmul(mean * (1 - contrast), x, contrast).clamp_(0.0, 1.0)  # mean + (x - mean) * c
    if x.shape[1] == 3:
        x = torch.addcmul(_gray(x) * (1 - saturation), x, saturation).clamp_(0.0, 1.0)  # gray + (x - gray) * s
    return x


def hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = _uniform(generator, x.shape[0], 0.0, 1.0, x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)
