"""The README's quick start works as written: its commands run, in order, on generated frames
(with a short train.max_steps appended to the train command, so the test stays fast)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from shardgan.configfile import load_config
from shardgan.errors import ShardganError
from shardgan.stop import EXIT_INTERRUPTED, EXIT_STOPPED
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
    write_frames(tmp_path / "my_frames", 400, width=96, height=72)  # the val split takes 256
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


def test_quick_start_packs_as_many_val_frames_as_its_config_evaluates() -> None:
    """Fewer would warn at every evaluation and measure SWD on fewer images than the config says."""
    pack, train = quick_start_commands()[:2]
    config = load_config(ROOT / train[train.index("--config") + 1], [])
    assert int(pack[pack.index("--val") + 1]) >= config.eval.num_images


def _subclasses(cls: type) -> list[type]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _subclasses(sub))]


def test_the_exit_codes_section_lists_every_code_shardgan_gives() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Exit codes\n") :].split("\n\n")[1]  # the list under the heading
    documented = {int(code) for code in re.findall(r"(?<![\w.])(\d+)(?: \(`EX_TEMPFAIL`\))?:", section)}
    machine_refusal = 1  # cli.main's answer to an OSError: read-only run dir, full disk, permissions
    given = {c.exit_code for c in _subclasses(ShardganError)} | {EXIT_STOPPED, EXIT_INTERRUPTED, machine_refusal, 0}
    assert documented >= given, f"undocumented: {sorted(given - documented)}"
