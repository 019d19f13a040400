"""`shardgan generate`: same seed, same images; names carry the step; one PNG each or a walk strip."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from shardgan.generate import GEN_BATCH, generate, generate_images, slerp
from tests.trainer_runs import STEPS


def test_generate_is_reproducible(straight: Path, tmp_path: Path) -> None:
    step, a = generate(straight, num_images=16, seed=3, out=tmp_path / "a")
    _, b = generate(straight, num_images=16, seed=3, out=tmp_path / "b")
    _, c = generate(straight, num_images=16, seed=4, out=tmp_path / "c")
    assert step == STEPS and a[0].name == f"step{STEPS:08d}_seed3_grid.png"
    assert a[0].read_bytes() == b[0].read_bytes() != c[0].read_bytes()
    assert len(generate(straight, num_images=5, grid=False, out=tmp_path / "d")[1]) == 5
    strip = generate(straight, interpolate=6, out=tmp_path / "e")[1][0]
    assert Image.open(strip).size == (6 * (24 + 2) + 2, 16 + 4)


def test_generate_images_draws_fixed_latents_in_batches_and_in_eval_mode() -> None:
    seen: list[tuple[int, bool]] = []

    class Echo(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            seen.append((len(z), self.training))
            return z[:, :3].expand(-1, -1, 2, 2)  # (B, 3, 2, 2)

    echo = Echo()
    images = generate_images(echo, GEN_BATCH + 5, 4, torch.device("cpu"), seed=7)
    assert images.shape == (GEN_BATCH + 5, 3, 2, 2) and seen == [(GEN_BATCH, False), (5, False)]
    assert echo.training, "the training mode is only borrowed"
    assert torch.equal(images, generate_images(echo, GEN_BATCH + 5, 4, torch.device("cpu"), seed=7))
    assert not torch.equal(images, generate_images(echo, GEN_BATCH + 5, 4, torch.device("cpu"), seed=8))


def test_slerp_ends_at_its_endpoints_and_keeps_the_norm() -> None:
    a, b = torch.randn(16, generator=torch.Generator().manual_seed(0)), torch.randn(16, generator=torch.Generator().manual_seed(1))
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    assert torch.allclose(slerp(a, a, torch.linspace(0, 1, 3)), a.expand(3, -1))
