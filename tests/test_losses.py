"""The GAN losses on D's logits: the values that define them, and their gradients' direction."""

from __future__ import annotations

import math

import pytest
import torch

from shardgan.config import LOSS_NAMES
from shardgan.losses import LOSSES, bce_d, bce_g, hinge_d, hinge_g


def test_every_name_the_config_accepts_has_a_loss() -> None:
    assert sorted(LOSSES) == sorted(LOSS_NAMES)


def test_bce_at_zero_logits_is_log_2_per_term() -> None:
    zeros = torch.zeros(8)
    assert bce_d(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert bce_g(zeros).item() == pytest.approx(math.log(2))


def test_hinge_values() -> None:
    assert hinge_d(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert hinge_g(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_d_loss_falls_as_d_separates_and_g_loss_falls_as_g_fools(name: str) -> None:
    d_loss, g_loss = LOSSES[name]
    logits = torch.zeros(4, requires_grad=True)
    d_loss(logits, torch.zeros(4)).backward()
    assert (logits.grad < 0).all()  # raising D(real) lowers D's loss
    fake = torch.zeros(4, requires_grad=True)
    g_loss(fake).backward()
    assert (fake.grad < 0).all()  # raising D(G(z)) lowers G's loss
