"""Shared test data: small game-like frames and packed datasets, all generated here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shardgan.manifest import Manifest, SplitInfo
from shardgan.shards import Sample, encode_image, sample_key, write_shard

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
pytest_plugins = ["tests.trainer_runs"]  # trainer session fixtures, computed once for all test files


def game_frame(index: int, width: int = 160, height: int = 120) -> np.ndarray:
    """A deterministic, distinct, game-like RGB frame: sky/ground split, a moving block, a HUD bar."""
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
    """Write `count` distinct PNG frames into `directory` (nested a level, like per-video folders)."""
    paths = []
    for i in range(start, start + count):
        path = directory / f"run{i % 3}" / f"frame_{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(game_frame(i, width, height)).save(path)
        paths.append(path)
    return paths


def build_dataset(
    directory: Path,
    shard_sizes: list[int],
    width: int = 16,
    height: int = 12,
    channels: int = 3,
    image_format: str = "png",
    val_sizes: tuple[int, ...] = (),
) -> Manifest:
    """Write shards + manifest directly (no pack) so loader/trainer tests stand on their own.

    Sample pixels encode their global index, so tests can check which sample came out.
    """
    directory.mkdir(parents=True, exist_ok=True)
    splits: dict[str, SplitInfo] = {}
    index = 0
    for split, sizes in (("train", shard_sizes), ("val", list(val_sizes))):
        infos = []
        for shard_no, size in enumerate(sizes):
            samples = []
            for _ in range(size):
                pixels = game_frame(index, width, height)[:, :, :channels]
                samples.append(Sample(sample_key(index), encode_image(pixels, image_format), {"src": f"frame_{index}.png"}))
                index += 1
            infos.append(write_shard(directory / f"{split}-{shard_no:06d}.tar", samples, image_format))
        splits[split] = SplitInfo(infos)
    manifest = Manifest(width, height, channels, image_format, splits, num_inputs=index, root=directory)
    manifest.write(directory)
    return manifest


@pytest.fixture
def frames_dir(tmp_path: Path) -> Path:
    write_frames(tmp_path / "frames", 40)
    return tmp_path / "frames"
