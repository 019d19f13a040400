"""GAN losses on D's logits as small pure functions: the original project's BCE (Sigmoid folded
in), hinge, and R3GAN's relativistic pairing loss; and the zero-centred gradient penalty (R1 on
reals, R2 on fakes) any of them can be given."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GLossFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
"""G's loss of (fake logits, real logits): only a relativistic loss reads the real ones (else None)."""


def bce_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The original project's errD_real + errD_fake: BCE(Sigmoid(D(x)), 1) + BCE(Sigmoid(D(G(z))), 0)."""
    return F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + (
        F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    )


def bce_g(fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """The original project's non-saturating G loss: BCE(Sigmoid(D(G(z))), 1)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def hinge_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g(fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
    return -fake_logits.mean()


def rpgan_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """RpGAN (Huang et al. 2025, R3GAN): softplus(D(G(z_i)) - D(x_i)), real i paired with fake i.
    D only judges how much more real x_i looks than G(z_i), so it cannot push all fakes to one
    region of "fake", the mode dropping of the plain loss."""
    return F.softplus(fake_logits - real_logits).mean()


def rpgan_g(fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """RpGAN's G loss: softplus(D(x_i) - D(G(z_i))), with D(x_i) from the same (current) D."""
    assert real_logits is not None, "rpgan's G loss pairs each fake with a real"
    return F.softplus(real_logits - fake_logits).mean()


def gradient_penalty(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Zero-centred gradient penalty E[||d D(x) / d x||^2] over the batch (Mescheder et al. 2018):
    R1 with x the reals D saw, R2 with x the fakes. `inputs` must require grad and `logits`
    (B,) come from them; the graph is kept (create_graph), so D's loss can be differentiated
    through the penalty. The gradient is that of the batch's sum, as in StyleGAN2: every image's
    own where its logit depends on it alone (no BatchNorm or minibatch-stddev in D)."""
    (grad,) = torch.autograd.grad(logits.float().sum(), inputs, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()


LOSSES: dict[str, tuple[LossFn, GLossFn]] = {
    "bce": (bce_d, bce_g),
    "hinge": (hinge_d, hinge_g),
    "rpgan": (rpgan_d, rpgan_g),
}
RELATIVISTIC = frozenset({"rpgan"})
"""Losses whose G loss pairs each fake with a real: the G step runs D on the reals too."""
