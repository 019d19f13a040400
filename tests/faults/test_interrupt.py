"""Ctrl-C as a terminal sends it: SIGINT to the foreground process group of a real `make train`
(this repo's Makefile, on generated frames and the tiny preset) and of a `python -m
shardgan.launch` job, once and twice. Once: the stop checkpoint and one line naming the command
that resumes, no traceback, exit 75 (make itself dies of the SIGINT it got, as make does). Twice,
the second while the stop checkpoint is being written: interrupted at once, exit 130."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shardgan.synthetic import write_frames
from tests.conftest import PYTHON, ROOT
from tests.trainer_runs import CONFIG, ENV, INJECT, wait_for

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

TRAIN = ["train.max_steps=100000", "checkpoint.every_steps=100000", "checkpoint.every_minutes=0", "checkpoint.at_epoch_end=false"]
STOPPED = re.compile(r"stopped by SIGINT at step (\d+) with a checkpoint; run `([^`]+)` again to resume")


def make_tree(tmp: Path) -> Path:
    """A copy of the Makefile beside a .venv whose python runs this one (stamped installed: nothing installs)."""
    tree = tmp / "clone"
    (tree / ".venv" / "bin").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tree / name)
    python = tree / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(PYTHON)} "$@"\n')
    python.chmod(0o755)
    (tree / ".venv" / ".installed").touch()
    write_frames(tree / "frames", 60, width=48, height=32)
    return tree


def interrupt(args: list[str], cwd: Path, run: Path, times: int, tmp: Path) -> tuple[int, str]:
    """Start `args` as its own process group, SIGINT the group `times` times (the second 2.5 s
    after the first, inside rank 0's stop checkpoint write), return its exit status and output."""
    marker = tmp / "in_write"
    env = {**ENV, "PYTHONPATH": f"{ROOT}{os.pathsep}{INJECT}", "SHARDGAN_KILL_MARKER": str(marker), "SHARDGAN_PAUSE_IN_WRITE": "0:1"}
    for name in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS"):  # run as from a shell, also when the suite runs under `make test`
        env.pop(name, None)
    with open(tmp / "out.txt", "w") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: (run / "train.log").exists() and " step 5/" in (run / "train.log").read_text(), proc, 180)
        os.killpg(proc.pid, signal.SIGINT)
        wait_for(marker.exists, proc)
        if times == 2:
            time.sleep(2.5)  # past stop.REPEAT_WINDOW_S: a second Ctrl-C, not a copy of the first
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(1.0)
        marker.unlink()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, (tmp / "out.txt").read_text()


def checked(code: int, out: str, times: int, run: Path) -> re.Match | None:
    assert "Traceback" not in out and "ChildFailedError" not in out, out[-3000:]
    found = STOPPED.search(out)
    if times == 1:
        assert found, out[-3000:]
        assert (run / "checkpoints" / f"step_{int(found[1]):08d}.json").exists()
    else:
        assert found is None and "interrupted" in out, out[-3000:]
        assert not list((run / "checkpoints").glob("*.tmp")), "an interrupted write leaves no temp file"
    return found


@pytest.mark.parametrize("times", [1, 2])
def test_ctrl_c_under_make(tmp_path: Path, times: int) -> None:
    tree = make_tree(tmp_path)
    runs = tmp_path / "runs"
    variables = [
        "DATA=frames", "SHARDS=shards", "SIZE=24x16", "VAL=8", f"CONFIG={CONFIG}", "NPROC=2", "RUN=mine",
        "ARGS=" + " ".join([f"run.root={runs}", *TRAIN]),
    ]  # fmt: skip
    code, out = interrupt(["make", "train", *variables], tree, runs / "mine", times, tmp_path)
    assert code == -signal.SIGINT, out[-3000:]  # make re-raises the SIGINT it got: a shell shows 130
    assert "pip install" not in out and "vizdoom" not in out, "own frames: no demo extra"
    found = checked(code, out, times, runs / "mine")
    if found:
        assert shlex.split(found[2])[:2] == ["make", "train"]
        assert sorted(shlex.split(found[2])[2:]) == sorted(variables)
        assert out.rstrip().splitlines()[-1].startswith("make: *** [Makefile"), out[-500:]  # make's own last word


@pytest.mark.parametrize("times", [1, 2])
def test_ctrl_c_under_launch(tmp_path: Path, tiny_shards: Path, times: int) -> None:
    run = tmp_path / "runs" / "mine"
    args = [
        PYTHON, "-m", "shardgan.launch", "--standalone", "--nproc_per_node=2", "-m", "shardgan.train",
        "--config", str(CONFIG), f"data.shards={tiny_shards}", f"run.root={run.parent}", f"run.name={run.name}", *TRAIN,
    ]  # fmt: skip
    code, out = interrupt(args, ROOT, run, times, tmp_path)
    assert code == (75 if times == 1 else 130), out[-3000:]
    found = checked(code, out, times, run)
    if found:
        assert found[2].startswith("python -m shardgan.launch --standalone"), found[2]
