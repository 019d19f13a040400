"""Plain progress lines for job logs: one every every_s seconds, with rate and ETA; in pack and train off a terminal."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from shardgan.progress import ProgressLines
from shardgan.synthetic import write_frames
from tests.conftest import PYTHON, ROOT
from tests.trainer_runs import train_inprocess

LINE = re.compile(r"^(\w+): (\d+)/(\d+) (\w+) \((\d+)%\), [\d.]+\w+/s, ETA \d\d:\d\d$")


def test_a_line_every_interval_with_counts_rate_and_eta() -> None:
    written: list[str] = []
    lines = ProgressLines("encode", 400, "frame", 0.05, written.append)
    lines.update(100)
    assert written == []  # not yet due
    time.sleep(0.06)
    lines.update(100)
    assert len(written) == 1 and LINE.match(written[0]).groups()[:5] == ("encode", "200", "400", "frame", "50"), written
    ProgressLines("encode", 400, "frame", 0, written.append).update(400)  # 0: never
    assert len(written) == 1


@pytest.mark.multiproc
def test_pack_off_a_terminal_prints_progress_lines(tmp_path: Path) -> None:
    write_frames(tmp_path / "frames", 600, width=64, height=48)
    command = [PYTHON, "-m", "shardgan", "pack", str(tmp_path / "frames"), str(tmp_path / "out"), "--size", "32x24", "--workers", "1", "--progress-every", "0.001"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = [LINE.match(line) for line in done.stdout.splitlines() if line.startswith("encode: ")]
    assert found and all(found), done.stdout
    assert {m[3] for m in found} == {"600"} and int(found[-1][2]) <= 600


def test_train_off_a_terminal_logs_progress_lines(tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_inprocess(tiny_shards, tmp_path / "run", "data.progress_every_s=0.001", "train.max_steps=10") == 0
    found = [LINE.match(line.split(" INFO ")[1]) for line in capsys.readouterr().err.splitlines() if " INFO train: " in line]
    assert found and all(found) and {m[3] for m in found} == {"80"}, found  # 10 steps of 8 images
