"""Synthetic game-like frames: the test suite's data and the benchmarks', generated, never downloaded.

Here, not in tests/, so the benchmarks in tools/ import it like any other part of the package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def game_frame(index: int, width: int = 160, height: int = 120) -> np.ndarray:
    """A deterministic, distinct, game-like RGB frame (H, W, 3) uint8: sky/ground split, a moving
    block, a HUD bar whose length grows with `index`."""
    rng = np.random.default_rng(index)
    y = np.arange(height)[:, None, None]
    sky = np.array([80, 140, 230], np.uint8)
    ground = np.array([60, 160, 60], np.uint8)
    horizon = height // 2 + int(rng.integers(-height // 8, height // 8))
    frame = np.where(y < horizon, sky, ground).repeat(width, axis=1).astype(np.uint8)
    bx, by = int(rng.integers(0, width - width // 5)), int(rng.integers(0, height - height // 5))
    frame[by : by + height // 5, bx : bx + width // 5] = rng.integers(0, 256, 3, dtype=np.uint8)
    frame[: max(2, height // 12), :] = (20, 20, 20)
    frame[: max(2, height // 12), : (index * 7) % width] = (250, 220, 0)
    noise = rng.integers(0, 12, frame.shape, dtype=np.uint8)
    return frame + noise


def write_frames(directory: Path, count: int, width: int = 160, height: int = 120, start: int = 0) -> list[Path]:
    """Write frames start .. start+count-1 as PNGs into `directory`, nested a level (like
    per-video folders): run{i % 3}/frame_{i:05d}.png. Returns their paths."""
    paths = []
    for i in range(start, start + count):
        path = directory / f"run{i % 3}" / f"frame_{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(game_frame(i, width, height)).save(path)
        paths.append(path)
    return paths
