"""The one pair of image conversions: the same bits as the four hand-written ones they replaced
(augment's ToTensor + Normalize, the old to_float, viz's grid input, FID's uint8)."""

from __future__ import annotations

import torch

from shardgan.pixels import to_float, to_uint8, to_unit, unit_to_float

EVERY_BYTE = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)


def floats() -> torch.Tensor:
    """[-1, 1] floats as G makes them, the 256 levels' exact values and halfway points, and some out of range."""
    g = torch.Generator().manual_seed(0)
    levels = torch.linspace(-1, 1, 2 * 255 + 1)
    return torch.cat([torch.rand(10_000, generator=g) * 2 - 1, levels, torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.5])])


def test_uint8_to_float_is_the_old_to_float_and_augments_two_steps_to_the_bit():
    assert torch.equal(to_float(EVERY_BYTE), EVERY_BYTE.float().div_(127.5).sub_(1.0))
    assert torch.equal(to_float(EVERY_BYTE), unit_to_float(to_unit(EVERY_BYTE)))
    assert torch.equal(to_unit(EVERY_BYTE), EVERY_BYTE.float() / 255.0)
    assert to_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]


def test_floats_are_clamped_and_become_float32():
    assert to_float(torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)).tolist() == [-1.0, 0.5, 1.0]  # G's output: clamped
    assert to_float(torch.tensor([-2.0], dtype=torch.float64)).dtype == torch.float32


def test_float_to_unit_is_the_old_grid_input_and_to_uint8_the_old_fid_input():
    x = floats()
    assert torch.equal(to_unit(x), (x.float() + 1) / 2)
    assert torch.equal(to_uint8(x), ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))


def test_uint8_round_trips_and_the_results_are_new_tensors():
    assert torch.equal(to_uint8(to_float(EVERY_BYTE)), EVERY_BYTE)
    assert to_uint8(EVERY_BYTE) is EVERY_BYTE
    x = floats()
    before = x.clone()
    to_unit(x).zero_()  # the caller may work in place on what to_unit returns
    assert torch.equal(x, before)
