"""Batched augmentation: range, determinism from the generator, edge-padded translation."""

from __future__ import annotations

import torch

from shardgan.augment import augment, color_jitter, to_float, translate
from shardgan.config import DataConfig


def images(batch: int = 8, channels: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (batch, channels, 12, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_output_is_float_in_range_and_repeats_for_the_same_generator_state():
    cfg = DataConfig(translate_px=2, color_jitter=0.2, hflip=True)
    x = images()
    a = augment(x, cfg, torch.Generator().manual_seed(5))
    b = augment(x, cfg, torch.Generator().manual_seed(5))
    c = augment(x, cfg, torch.Generator().manual_seed(6))
    assert a.dtype == torch.float32 and a.shape == x.shape
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment(x, cfg, torch.Generator().manual_seed(5)), a)  # uint8 input untouched


def test_no_augmentation_is_plain_normalization():
    x = images(channels=1)
    out = augment(x, DataConfig(translate_px=0, color_jitter=0.0, hflip=False), torch.Generator())
    torch.testing.assert_close(out, to_float(x))
    assert to_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]


def test_translate_shifts_with_edge_replication():
    x = torch.arange(12 * 16, dtype=torch.float32).reshape(1, 1, 12, 16)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    dy, dx = torch.randint(-2, 3, (1,), generator=g).item(), torch.randint(-2, 3, (1,), generator=g).item()
    g.set_state(state)
    out = translate(x, 2, g)[0, 0]
    rows = (torch.arange(12) - dy).clamp(0, 11)
    cols = (torch.arange(16) - dx).clamp(0, 15)
    assert torch.equal(out, x[0, 0][rows][:, cols])


def test_color_jitter_keeps_gray_images_gray_and_changes_colour_ones():
    g = torch.Generator().manual_seed(3)
    gray = torch.full((4, 3, 6, 6), 0.5)
    out = color_jitter(gray, 0.3, g)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    x = images().float() / 255
    assert not torch.allclose(color_jitter(x.clone(), 0.3, g), x)
