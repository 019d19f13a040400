"""SWD tells real from fake; FID/KID load only user-given weights and never download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shardgan.config import Config
from shardgan.errors import ConfigError, DataError
from shardgan.quality import (
    Evaluator,
    InceptionFeatures,
    SlicedWasserstein,
    _up,
    frechet_distance,
    kernel_inception_distance,
    laplacian_pyramid,
    num_levels,
)

from .conftest import build_dataset, game_frame


def frames(start: int, count: int, width: int = 32, height: int = 24) -> torch.Tensor:
    """uint8 (N, 3, H, W) game-like frames."""
    return torch.from_numpy(np.stack([game_frame(i, width, height) for i in range(start, start + count)])).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def real_swd() -> tuple[SlicedWasserstein, torch.Tensor]:
    """SWD reference on frames 0..63 and 64 other frames of the same kind (fewer projections: speed)."""
    return SlicedWasserstein(frames(0, 64), patches_per_image=32, num_projections=128), frames(1000, 64)


def test_swd_real_vs_real_is_far_below_noise_and_colour_shift(real_swd: tuple[SlicedWasserstein, torch.Tensor]) -> None:
    metric, other = real_swd
    same = metric(other)["swd"]
    noise = metric(torch.rand(64, 3, 24, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)["swd"]
    shifted = other.float() / 127.5 - 1
    shifted[:, 0] += 0.3  # redder
    shifted[:, 2] -= 0.3  # less blue
    colour = metric(shifted.clamp(-1, 1))["swd"]
    assert same * 10 < noise
    assert same * 2 < colour
    assert colour < noise


def test_swd_is_deterministic_and_reports_each_level(real_swd: tuple[SlicedWasserstein, torch.Tensor]) -> None:
    metric, other = real_swd
    first, second = metric(other), metric(other)
    assert first == second
    assert len(first["swd_levels"]) == metric.levels == 2  # 32x24, 16x12
    assert first["swd"] == pytest.approx(sum(first["swd_levels"]) / 2, abs=1e-3)


def test_laplacian_pyramid_sums_back_to_the_image() -> None:
    images = frames(0, 4, width=64, height=48).float() / 127.5 - 1
    levels = laplacian_pyramid(images, num_levels(48, 64))
    assert [tuple(level.shape[-2:]) for level in levels] == [(48, 64), (24, 32), (12, 16)]
    rebuilt = levels[-1]
    for band in reversed(levels[:-1]):
        rebuilt = band + _up(rebuilt, band.shape[-2:])
    torch.testing.assert_close(rebuilt, images)


def test_frechet_and_kid_are_zero_for_the_same_set_and_grow_with_a_shift() -> None:
    rng = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 8, generator=rng), torch.randn(400, 8, generator=rng)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, b) < frechet_distance(a, b + 1.0)
    assert kernel_inception_distance(a, b, subset_size=100) < kernel_inception_distance(a, b + 1.0, subset_size=100)


def test_missing_inception_weights_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="never downloads"):
        InceptionFeatures(tmp_path / "nope.pth", torch.device("cpu"))
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="not a torchvision inception_v3"):
        InceptionFeatures(bad, torch.device("cpu"))


def test_evaluator_scores_a_generator_against_the_val_split(tmp_path: Path) -> None:
    from shardgan.models import build_models

    build_dataset(tmp_path / "shards", [16], width=16, height=12, val_sizes=(24,))
    cfg = Config()
    cfg.data.shards = str(tmp_path / "shards")
    cfg.model.width, cfg.model.height, cfg.model.nz, cfg.model.ngf, cfg.model.ndf = 16, 12, 8, 4, 4
    cfg.eval.num_images = 20
    g, _ = build_models(cfg.model, 0)
    evaluator = Evaluator.build(cfg, torch.device("cpu"))
    assert evaluator.num_images == 20
    scores = evaluator(g)
    assert scores["swd"] > 0 and scores == evaluator(g)
    assert g.training  # eval mode was only borrowed


def test_evaluator_without_val_split_says_how_to_make_one(tmp_path: Path) -> None:
    build_dataset(tmp_path / "shards", [16], width=16, height=12)
    cfg = Config()
    cfg.data.shards = str(tmp_path / "shards")
    with pytest.raises(DataError, match="--val"):
        Evaluator.build(cfg, torch.device("cpu"))

