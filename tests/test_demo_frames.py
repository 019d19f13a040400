"""tools/make_demo_frames.py: deterministic, cached, complete-or-absent episode folders."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from .conftest import ROOT

spec = importlib.util.spec_from_file_location("make_demo_frames", ROOT / "tools" / "make_demo_frames.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.png"))}


def test_procedural_episodes_are_deterministic_cached_and_hold_filter_work(tmp_path: Path, monkeypatch) -> None:
    """The procedural source stands in for vizdoom here, so the test needs no game engine."""
    monkeypatch.setattr(demo, "pick_source", lambda every: (demo.procedural_frames, "test"))
    assert demo.make_frames(tmp_path / "a", 3, 12, 1, seed=5, resolution="320x240") == 36
    assert demo.make_frames(tmp_path / "b", 3, 12, 1, seed=5, resolution="320x240") == 36
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [demo.episode_name(i, 5) for i in range(3)]
    assert not (tmp_path / "a.partial").exists()

    first = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "a" / demo.episode_name(0, 5)).glob("*.png"))]
    assert first[0].shape == (240, 320, 3) and first[0].max() == 0  # a black loading screen
    assert any((x == y).all() for x, y in zip(first[2:], first[3:]))  # a paused (repeated) frame

    (tmp_path / "a" / demo.episode_name(1, 5) / "frame_00003.png").unlink()  # an incomplete episode
    assert demo.make_frames(tmp_path / "a", 3, 12, 1, seed=5, resolution="320x240") == 12  # only it is redone
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert demo.make_frames(tmp_path / "a", 3, 12, 1, seed=5, resolution="320x240") == 0
