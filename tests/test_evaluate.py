"""The per-run Evaluator and `shardgan eval`: a generator scored against the val split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from shardgan.config import Config
from shardgan.errors import CheckpointError, DataError
from shardgan.evaluate import Evaluator, evaluate_run, load_real_images

from .conftest import build_dataset
from .trainer_runs import STEPS


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


def test_evaluator_warns_once_when_the_val_split_is_smaller_than_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build_dataset(tmp_path / "shards", [16], width=16, height=12, val_sizes=(8,))
    cfg = Config()
    cfg.data.shards = str(tmp_path / "shards")
    cfg.model.width, cfg.model.height = 16, 12
    cfg.eval.num_images = 512
    with caplog.at_level("WARNING", logger="shardgan"):
        evaluator = Evaluator.build(cfg, torch.device("cpu"))
    assert evaluator.num_images == 8
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "has 8 images, fewer than eval.num_images=512" in warnings[0] and "\n" not in warnings[0]


@pytest.mark.parametrize("count", ["0", "1", "-3"])
def test_eval_refuses_invalid_counts_in_one_line(tmp_path: Path, count: str, capsys: pytest.CaptureFixture) -> None:
    from shardgan.cli import main

    assert main(["eval", str(tmp_path), "-n", count]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "num-images" in err


def test_evaluator_without_val_split_says_how_to_make_one(tmp_path: Path) -> None:
    build_dataset(tmp_path / "shards", [16], width=16, height=12)
    cfg = Config()
    cfg.data.shards = str(tmp_path / "shards")
    with pytest.raises(DataError, match="--val"):
        Evaluator.build(cfg, torch.device("cpu"))


def test_the_real_side_is_the_val_split_and_the_same_every_time(tmp_path: Path) -> None:
    build_dataset(tmp_path / "shards", [16], width=16, height=12, val_sizes=(6, 6))
    cfg = Config().data
    cfg.shards = str(tmp_path / "shards")
    real = load_real_images(cfg, 8)
    assert real.shape == (8, 3, 12, 16) and real.dtype == torch.uint8
    assert torch.equal(real, load_real_images(cfg, 8))
    assert len(load_real_images(cfg, 100)) == 12  # the whole split when it holds fewer


def test_eval_scores_a_runs_newest_checkpoint_and_appends_to_eval_jsonl(straight: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(straight, tmp_path / "run"))  # the session's reference run stays as it is
    build_dataset(tmp_path / "shards", [8], width=24, height=16, val_sizes=(10,))
    overrides = [f"data.shards={tmp_path / 'shards'}", "eval.num_images=10"]
    _, scores = evaluate_run(run, overrides=overrides)
    assert scores["step"] == STEPS and scores["checkpoint"].endswith(f"step_{STEPS:08d}.pt") and scores["swd"] > 0
    assert 0 < scores["diversity"]
    _, again = evaluate_run(run, overrides=overrides)
    assert again == scores
    records = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert records[-2:] == [scores, again]


def test_eval_of_a_missing_or_empty_run_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="run directory not found"):
        evaluate_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        evaluate_run(tmp_path / "empty")


def test_eval_says_which_checkpoint_with_its_logged_swd_and_scores_best_with_best(best_is_older: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shardgan.cli import app

    run = Path(shutil.copytree(best_is_older, tmp_path / "run"))
    best = run / "checkpoints" / "best" / "step_00000010.pt"
    runner = CliRunner()  # stdout and stderr apart
    default = runner.invoke(app, ["eval", str(run)])
    assert default.exit_code == 0, default.output
    assert default.stderr.strip() == (
        f"using {run / 'checkpoints' / 'step_00000020.pt'} (step 20, logged SWD 60.00); "
        f"the best checkpoint is {best} (step 10, logged SWD 30.00): --best uses it"
    )
    assert json.loads(default.stdout)["step"] == 20
    chosen = runner.invoke(app, ["eval", str(run), "--best"])
    assert chosen.exit_code == 0 and chosen.stderr.strip() == f"using {best} (step 10, logged SWD 30.00)"
    assert json.loads(chosen.stdout)["checkpoint"] == str(best)
