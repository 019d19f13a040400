"""`shardgan generate`: same seed, same images; names carry the step; one PNG each or a walk strip."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from shardgan.generate import GEN_BATCH, generate, generate_images, slerp
from tests.trainer_runs import STEPS


def test_generate_is_reproducible(straight: Path, tmp_path: Path) -> None:
    chosen, a = generate(straight, num_images=16, seed=3, out=tmp_path / "a")
    step = chosen.used.step
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
    # Between latents of one norm, every point keeps it (a straight line would cut inside: for these
    # two, its midpoint has 0.89 of their norm).
    b = b * a.norm() / b.norm()
    norms = slerp(a, b, torch.linspace(0, 1, 9)).norm(dim=1)
    assert torch.allclose(norms, a.norm().expand(9), rtol=1e-5)
    assert not torch.allclose(torch.lerp(a, b, 0.5).norm(), a.norm(), rtol=0.05)


def test_generate_says_which_checkpoint_and_points_to_a_better_best_one(best_is_older: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shardgan.cli import app

    newest, best = best_is_older / "checkpoints" / "step_00000020.pt", best_is_older / "checkpoints" / "best" / "step_00000010.pt"
    default = CliRunner().invoke(app, ["generate", str(best_is_older), "-n", "4", "--out", str(tmp_path / "a")])
    assert default.exit_code == 0, default.output
    assert default.output.splitlines()[0] == (
        f"using {newest} (step 20, logged SWD 60.00); the best checkpoint is {best} (step 10, logged SWD 30.00): --best uses it"
    )
    assert (tmp_path / "a" / "step00000020_seed0_grid.png").exists()
    chosen = CliRunner().invoke(app, ["generate", str(best_is_older), "-n", "4", "--best", "--out", str(tmp_path / "b")])
    assert chosen.exit_code == 0, chosen.output
    assert chosen.output.splitlines()[0] == f"using {best} (step 10, logged SWD 30.00)"
    assert (tmp_path / "b" / "step00000010_seed0_grid.png").exists()


def test_generate_best_without_an_evaluation_is_one_line(straight: Path, capsys) -> None:
    from shardgan.cli import main

    assert main(["generate", str(straight), "--best"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no checkpoint in {straight / 'checkpoints' / 'best'}") and err.count("\n") == 1
