"""Images as uint8 in [0, 255] (shards, PNGs, Inception's input) and as float32 in [-1, 1] (what
G makes and D sees): the one pair of conversions, `to_float` and `to_uint8`. [0, 1] is the stage
between (the original project's ToTensor range, where the colour jitter and torchvision's
save_image work), so both are built from `to_unit` and `unit_to_float`.
"""

from __future__ import annotations

import torch


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] -> a new float32 tensor in [0, 1] (not clamped), which the
    caller may change in place."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float().add(1.0).div_(2.0)


def unit_to_float(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] in place (the original project's Normalize(0.5, 0.5))."""
    return x.mul_(2.0).sub_(1.0)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Images as the models see them, float32 in [-1, 1] on the same device: uint8 is scaled
    (ToTensor + Normalize; u / 127.5 - 1 to the bit, since 127.5 is 255 / 2 exactly), a float
    batch (already [-1, 1], e.g. G's output) is clamped."""
    if images.dtype == torch.uint8:
        return unit_to_float(to_unit(images))
    return images.float().clamp(-1, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounded to nearest, out-of-range values clamped; uint8
    is returned as it is."""
    if images.dtype == torch.uint8:
        return images
    return to_unit(images).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
