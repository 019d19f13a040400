"""SWD tells real from fake; FID/KID load only user-given weights and never download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shardgan.errors import ConfigError
from shardgan.fidelity import (
    FidKid,
    SlicedWasserstein,
    _up,
    diversity,
    inception_features,
    laplacian_pyramid,
    num_levels,
    sorted_rows,
    to_uint8_rgb,
)
from shardgan.synthetic import game_frame


def frames(start: int, count: int, width: int = 32, height: int = 24) -> torch.Tensor:
    """uint8 (N, 3, H, W) game-like frames."""
    return torch.from_numpy(np.stack([game_frame(i, width, height) for i in range(start, start + count)])).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def real_swd() -> tuple[SlicedWasserstein, torch.Tensor]:
    """SWD reference on frames 0..63 and 64 other frames of the same kind (fewer projections: speed)."""
    return SlicedWasserstein(frames(0, 64), patches_per_image=32, num_projections=128, normalize="real"), frames(1000, 64)


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


def test_sorted_rows_gives_torchs_sorted_values() -> None:
    """numpy's sort on the CPU (the evaluation's speed) must sort exactly as torch's, ties and all."""
    x = torch.randn(5, 3000, generator=torch.Generator().manual_seed(0))
    x[:, ::7] = x[:, :1]  # repeated values in every row
    got = sorted_rows(x.T.contiguous().T)  # a strided view, as chunk.T @ descriptors.T is not
    assert got.dtype == x.dtype and torch.equal(got, x.sort(dim=1).values)
    assert not torch.equal(got, x)


def test_laplacian_pyramid_sums_back_to_the_image() -> None:
    images = frames(0, 4, width=64, height=48).float() / 127.5 - 1
    levels = laplacian_pyramid(images, num_levels(48, 64))
    assert [tuple(level.shape[-2:]) for level in levels] == [(48, 64), (24, 32), (12, 16)]
    rebuilt = levels[-1]
    for band in reversed(levels[:-1]):
        rebuilt = band + _up(rebuilt, band.shape[-2:])
    torch.testing.assert_close(rebuilt, images)


@pytest.mark.slow
def test_paper_swd_normalizes_each_set_by_its_own_statistics() -> None:
    """A global colour cast is normalized away by the paper's SWD, and counts with real_stats."""
    real, other = frames(0, 48), frames(1000, 48)
    cast = (other.float() / 127.5 - 1) * 0.8 + 0.1  # lower contrast, brighter: per-channel affine
    paper = SlicedWasserstein.with_mode(real, "paper")
    assert paper.patches_per_image == 128 and paper.normalize == "each"
    assert paper(cast)["swd"] < 1.5 * paper(other)["swd"]
    real_stats = SlicedWasserstein.with_mode(real, "real_stats")
    assert real_stats.patches_per_image == 64
    assert real_stats(cast)["swd"] > 3 * real_stats(other)["swd"]


class StandIn(torch.nn.Module):
    """A tiny fixed feature network in place of Inception: uint8 (N, 3, H, W) -> (N, 48)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(48, 48, bias=False)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8 and images.shape[1] == 3  # what the Inception takes
        pooled = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, (4, 4)).flatten(1)
        return self.proj(pooled)


def test_fid_and_kid_come_from_torchmetrics_on_a_stand_in_network() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, other = frames(0, 64), frames(1000, 64)
    noise = torch.randint(0, 256, other.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    metric = FidKid(StandIn(), real, torch.device("cpu"))
    same, far = metric(other), metric(noise)
    assert same["fid"] < far["fid"] and same["kid"] < far["kid"]
    assert metric(other) == same  # KID's subsets come from a fixed seed
    assert metric(other.float() / 127.5 - 1) == same  # [-1, 1] floats are the same images

    # the same numbers as torchmetrics used the documented way, on the images themselves
    fid = FrechetInceptionDistance(feature=StandIn())
    kid = KernelInceptionDistance(feature=StandIn(), subsets=100, subset_size=64)
    for m in (fid, kid):
        m.update(real, real=True)
        m.update(noise, real=False)
    assert far["fid"] == pytest.approx(float(fid.compute()), rel=1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        assert far["kid"] == pytest.approx(float(kid.compute()[0]), rel=1e-5)


def test_grey_and_float_images_become_uint8_rgb() -> None:
    grey = torch.tensor([[[[-1.0, 1.0]]]])  # (1, 1, 1, 2)
    assert to_uint8_rgb(grey).tolist() == [[[[0, 255]], [[0, 255]], [[0, 255]]]]


def test_missing_inception_weights_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="never downloads"):
        inception_features(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="is not the FID Inception"):
        inception_features(bad)


def one_frame_plus_speckle(count: int, std: float, width: int = 32, height: int = 24) -> torch.Tensor:
    """A collapsed G's output: one frame for every z, plus per-pixel noise, as [-1, 1] floats."""
    one = frames(1000, 1, width, height).float() / 127.5 - 1
    noise = std * torch.randn(count, 3, height, width, generator=torch.Generator().manual_seed(0))
    return (one + noise).clamp(-1, 1)


def test_diversity_sees_one_frame_through_speckle_that_the_per_pixel_std_took_for_variety() -> None:
    """64x48, as the demo: speckle of std 0.1 (13/255) over one frame."""
    real = frames(0, 64, 64, 48)
    collapsed = one_frame_plus_speckle(64, 0.1, 64, 48)
    per_pixel_std = collapsed.std(dim=0).mean() / (real.float() / 127.5 - 1).std(dim=0).mean()
    assert per_pixel_std > 0.4  # the old measure: above its 0.2 threshold, "diverse"
    assert diversity(collapsed, real).item() < 0.1
    assert diversity(one_frame_plus_speckle(64, 0.01, 64, 48), real).item() < 0.01


def test_diversity_of_other_frames_of_the_same_game_is_near_one() -> None:
    real, other = frames(0, 64), frames(500, 64)
    assert 0.85 < diversity(other, real).item() < 1.15
    assert diversity(other, real).item() == pytest.approx(diversity(other.float() / 127.5 - 1, real).item(), rel=1e-5)  # uint8 or floats
    half = torch.cat([other[:32], other[:1].expand(32, -1, -1, -1)])  # half the samples one frame
    assert 0.3 < diversity(half, real).item() < diversity(other, real).item()
