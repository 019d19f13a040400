"""Grids and curves: the pixels a grid shows, whatever the input's type, and curves written whole."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shardgan.viz import save_curve, save_grid, save_loss_curve


def test_a_grid_shows_uint8_and_minus_one_to_one_floats_alike(tmp_path: Path) -> None:
    images = torch.randint(0, 256, (5, 3, 6, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    save_grid(images, tmp_path / "u8.png")
    save_grid(images.float() / 127.5 - 1, tmp_path / "float.png")
    u8, floats = (np.asarray(Image.open(tmp_path / name)).astype(int) for name in ("u8.png", "float.png"))
    assert u8.shape == (2 * (6 + 2) + 2, 3 * (8 + 2) + 2, 3)  # ceil(sqrt(5)) = 3 per row, 2 px padding
    assert np.abs(u8 - floats).max() <= 1
    np.testing.assert_array_equal(u8[2 : 2 + 6, 2 : 2 + 8], images[0].permute(1, 2, 0).numpy())


def test_grid_rows_and_values_out_of_range(tmp_path: Path) -> None:
    path = save_grid(torch.full((4, 1, 4, 4), 3.0), tmp_path / "sub" / "g.png", nrow=4)
    image = np.asarray(Image.open(path))
    assert path.parent.name == "sub" and image.shape == (4 + 4, 4 * (4 + 2) + 2, 3)
    assert image[2:6, 2:6].min() == 255  # clamped to white, not wrapped


def test_curves_plot_the_records_that_have_each_key(tmp_path: Path) -> None:
    records = [{"step": s, "loss_d": 1.0 / s, "loss_g": float(s)} for s in range(1, 20)] + [{"step": 20, "swd": 80.0}]
    loss = save_loss_curve(records, tmp_path / "loss.png")
    swd = save_curve(records, ("swd",), tmp_path / "swd.png", "SWD")
    assert Image.open(loss).size == Image.open(swd).size == (800, 400)
    assert np.asarray(Image.open(loss)).std() > 0
    assert sorted(os.listdir(tmp_path)) == ["loss.png", "swd.png"]  # no temp file left behind
