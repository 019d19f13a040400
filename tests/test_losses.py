"""The GAN losses on D's logits: the values that define them, and their gradients' direction."""

from __future__ import annotations

import math

import pytest
import torch

from shardgan.config import LOSS_NAMES
from shardgan.losses import LOSSES, RELATIVISTIC, bce_d, bce_g, gradient_penalty, hinge_d, hinge_g, rpgan_d, rpgan_g


def test_every_name_the_config_accepts_has_a_loss() -> None:
    assert sorted(LOSSES) == sorted(LOSS_NAMES)


def test_bce_at_zero_logits_is_log_2_per_term() -> None:
    zeros = torch.zeros(8)
    assert bce_d(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert bce_g(zeros).item() == pytest.approx(math.log(2))


def test_hinge_values() -> None:
    assert hinge_d(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert hinge_g(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)


def test_rpgan_values_pair_real_i_with_fake_i_and_ignore_a_common_shift() -> None:
    real, fake = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 1.0, -1.0])
    softplus = lambda t: math.log1p(math.exp(t))  # noqa: E731
    assert rpgan_d(real, fake).item() == pytest.approx((softplus(-2.0) + softplus(1.0) + softplus(0.0)) / 3)
    assert rpgan_g(fake, real).item() == pytest.approx((softplus(2.0) + softplus(-1.0) + softplus(0.0)) / 3)
    assert rpgan_d(real + 7.0, fake + 7.0).item() == pytest.approx(rpgan_d(real, fake).item())  # only differences count
    assert rpgan_d(real, fake.flip(0)).item() != pytest.approx(rpgan_d(real, fake).item())  # pairs, not two separate means
    assert rpgan_d(torch.zeros(5), torch.zeros(5)).item() == pytest.approx(math.log(2))
    assert RELATIVISTIC == {"rpgan"}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_d_loss_falls_as_d_separates_and_g_loss_falls_as_g_fools(name: str) -> None:
    d_loss, g_loss = LOSSES[name]
    logits = torch.zeros(4, requires_grad=True)
    fake_d = torch.zeros(4, requires_grad=True)
    d_loss(logits, fake_d).backward()
    assert (logits.grad < 0).all()  # raising D(real) lowers D's loss
    assert (fake_d.grad > 0).all()  # lowering D(G(z)) lowers it too
    fake = torch.zeros(4, requires_grad=True)
    g_loss(fake, torch.zeros(4) if name in RELATIVISTIC else None).backward()
    assert (fake.grad < 0).all()  # raising D(G(z)) lowers G's loss


def test_gradient_penalty_is_the_mean_squared_norm_of_each_images_own_input_gradient() -> None:
    """Against a hand computation: each logit's gradient by its own autograd.grad call."""
    gen = torch.Generator().manual_seed(0)
    d = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.LazyLinear(1))
    x = torch.randn(5, 3, 6, 7, generator=gen, requires_grad=True)
    logits = d(x).flatten()  # (5,)
    by_hand = [torch.autograd.grad(logits[i], x, retain_graph=True)[0][i].square().sum() for i in range(5)]
    penalty = gradient_penalty(logits, x)
    assert penalty.item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-5)
    # the graph is kept: D's loss can be differentiated through the penalty (double backward)
    weight = d[0].weight
    (grad_w,) = torch.autograd.grad(penalty, weight)
    assert grad_w.abs().sum() > 0


def test_gradient_penalty_of_a_linear_d_is_its_squared_weight_norm_and_its_gradient_shrinks_it() -> None:
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)  # D(x) = <w, x>: grad_x D = w for every image
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1), requires_grad=True)
    penalty = gradient_penalty((x * w).flatten(1).sum(1), x)
    assert penalty.item() == pytest.approx(1 + 4 + 0.25 + 9)
    (grad_w,) = torch.autograd.grad(penalty, w)
    assert torch.allclose(grad_w, 2 * w)  # descending it flattens D around the data: zero-centred
