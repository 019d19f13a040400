"""tools/compare_swd.py: several runs scored in one process against one val set."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .conftest import PYTHON, ROOT, build_dataset
from .trainer_runs import STEPS


def compare(*args: str) -> list[dict]:
    done = subprocess.run([PYTHON, str(ROOT / "tools" / "compare_swd.py"), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_runs_are_scored_alike_and_num_fakes_sets_how_many_images_each_generates(straight: Path, tmp_path: Path) -> None:
    build_dataset(tmp_path / "shards", [8], width=24, height=16, val_sizes=(16,))
    shards = ["--shards", str(tmp_path / "shards"), "--num-images", "16", "--modes", "paper,real_stats"]
    same, other = compare(str(straight), str(straight), *shards)
    assert same["step"] == STEPS and same["num_fakes"] == 16 and same["swd_paper"] > 0
    assert same == other  # one run twice: the same latents, patches, projections
    (more,) = compare(str(straight), *shards, "--num-fakes", "48")
    assert more["num_fakes"] == 48 and more["swd_paper"] != same["swd_paper"]
