"""tools/make_tuning_frames.py: deterministic stand-ins with the motion each kind promises, written
as make_demo_frames writes: complete-or-absent episodes, a rerun that writes only the missing ones."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import PYTHON, ROOT

spec = importlib.util.spec_from_file_location("make_tuning_frames", ROOT / "tools" / "make_tuning_frames.py")
tuning = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tuning)
TOOL = str(ROOT / "tools" / "make_tuning_frames.py")


def frames(kind: str, episode: int, seed: int = 0) -> list[np.ndarray]:
    return list(tuning.KINDS[kind](episode, seed, 20, (160, 120)))


@pytest.mark.parametrize("kind", sorted(tuning.KINDS))
def test_episodes_are_deterministic_and_differ_by_seed(kind: str) -> None:
    a, b, other = frames(kind, 1), frames(kind, 1), frames(kind, 1, seed=1)
    assert all(x.shape == (120, 160, 3) and x.dtype == np.uint8 for x in a)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not all((x == y).all() for x, y in zip(a, other))


def changed(kind: str) -> float:
    """The mean fraction of pixels that change from one saved frame to the next."""
    f = frames(kind, 0)
    return float(np.mean([(x != y).any(axis=2).mean() for x, y in zip(f, f[1:])]))


def test_the_scroller_slides_its_scene_and_the_static_screen_keeps_its_own() -> None:
    assert 0 < changed("static") < 0.02 and changed("scroller") > 3 * changed("static")
    start, end = frames("scroller", 0)[0], frames("scroller", 0)[-1]
    assert (start[-20:] != end[-20:]).any(axis=2).mean() > 0.15  # the ground and what stands on it moved
    f, g = frames("static", 0), frames("static", tuning.LAYOUTS)  # same layout, other episode
    assert (f[0] != g[0]).any(axis=2).mean() < 0.05


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.png"))}


def test_a_rerun_keeps_complete_episodes_and_writes_the_missing_ones(tmp_path: Path) -> None:
    args = ["static", "--frames-per-episode", "6", "--size", "64x48"]
    tuning.main([args[0], str(tmp_path / "full"), "--episodes", "3", *args[1:]])
    tuning.main([args[0], str(tmp_path / "out"), "--episodes", "2", *args[1:]])
    (tmp_path / "out" / "ep001_static" / "frame_00004.png").unlink()  # an incomplete episode
    kept = sorted((tmp_path / "out" / "ep000_static").iterdir())
    for path in kept:
        os.utime(path, ns=(10**18, 10**18))  # a rewrite would stamp it now
    tuning.main([args[0], str(tmp_path / "out"), "--episodes", "3", *args[1:]])
    assert [(p.stat().st_mtime_ns, p.stat().st_ino) for p in kept] == [(10**18, p.stat().st_ino) for p in kept]
    assert digests(tmp_path / "out") == digests(tmp_path / "full") and len(digests(tmp_path / "full")) == 18
    assert not (tmp_path / "out.partial").exists()


def test_a_run_killed_mid_episode_leaves_no_half_episode_and_its_rerun_completes_it(tmp_path: Path) -> None:
    """SIGKILL to the whole process group (no handler runs) while the second episode is being written."""
    frames_per_episode = 300
    args = ["scroller", "--episodes", "3", "--frames-per-episode", str(frames_per_episode), "--size", "48x36"]
    tuning.main([args[0], str(tmp_path / "reference"), *args[1:]])
    command = [PYTHON, TOOL, args[0], str(tmp_path / "out"), *args[1:]]
    run = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = tmp_path / "out.partial" / "ep001_scroller"
    deadline = time.monotonic() + 60
    while run.poll() is None and not any(second.glob("*.png")) and time.monotonic() < deadline:
        time.sleep(0.001)
    os.killpg(run.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL, "the run ended before it could be killed mid-episode"
    assert 0 < len(list(second.glob("*.png"))) < frames_per_episode
    episodes = {p.name: len(list(p.glob("*.png"))) for p in (tmp_path / "out").iterdir()}
    assert episodes == {"ep000_scroller": frames_per_episode}  # complete, or not there at all

    subprocess.run(command, check=True, capture_output=True, timeout=120)
    assert digests(tmp_path / "out") == digests(tmp_path / "reference") and len(digests(tmp_path / "reference")) == 3 * frames_per_episode
    assert not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("size", ["64by48", "64xauto"])
def test_a_bad_size_is_one_line_of_usage_error_not_a_traceback(tmp_path: Path, size: str) -> None:
    done = subprocess.run([PYTHON, TOOL, "scroller", str(tmp_path / "out"), "--size", size], capture_output=True, text=True, timeout=60)
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1 and "--size" in errors[0] and repr(size) in errors[0], done.stderr
    assert not (tmp_path / "out").exists()
