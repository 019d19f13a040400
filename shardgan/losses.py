"""GAN losses on D's logits as small pure functions: the original project's BCE (Sigmoid folded in) and hinge."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bce_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The original project's errD_real + errD_fake: BCE(Sigmoid(D(x)), 1) + BCE(Sigmoid(D(G(z))), 0)."""
    return F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + (
        F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    )


def bce_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """The original project's non-saturating G loss: BCE(Sigmoid(D(G(z))), 1)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def hinge_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


LOSSES: dict[str, tuple[LossFn, Callable[[torch.Tensor], torch.Tensor]]] = {
    "bce": (bce_d, bce_g),
    "hinge": (hinge_d, hinge_g),
}
