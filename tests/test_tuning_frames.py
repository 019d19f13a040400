"""tools/make_tuning_frames.py: deterministic stand-ins with the motion each kind promises."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from .conftest import ROOT

spec = importlib.util.spec_from_file_location("make_tuning_frames", ROOT / "tools" / "make_tuning_frames.py")
tuning = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tuning)


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
