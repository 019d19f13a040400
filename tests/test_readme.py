"""The README's quick start works as written: its commands run, in order, on generated frames
(with a short train.max_steps appended to the train command, so the test stays fast)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from shardgan.synthetic import write_frames
from tests.conftest import PYTHON, ROOT

pytestmark = pytest.mark.multiproc  # every test here starts Python processes


def quick_start_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start on your own frames") :]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path: Path) -> None:
    write_frames(tmp_path / "my_frames", 120, width=96, height=72)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PATH": f"{Path(PYTHON).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    commands = quick_start_commands()
    assert [c[:2] for c in commands] == [["shardgan", "pack"], ["shardgan", "train"], ["tensorboard", "--inspect"], ["shardgan", "generate"], ["shardgan", "eval"]]
    for command in commands:
        if command[:2] == ["shardgan", "train"]:
            command = [*command, "train.max_steps=10", "data.batch_size=8"]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{shlex.join(command)}: {done.stderr[-2000:]}"
        if command[0] == "tensorboard":
            assert "train/loss_d" in done.stdout
    assert len(list((tmp_path / "runs" / "mine" / "generated").glob("*_grid.png"))) == 1
    assert (tmp_path / "runs" / "mine" / "eval.jsonl").exists()
