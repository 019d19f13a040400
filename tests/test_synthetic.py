"""Synthetic frames: deterministic, distinct, and written where and as the tests expect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from shardgan.synthetic import game_frame, write_frames


def test_frames_are_deterministic_distinct_and_shaped() -> None:
    a = game_frame(3, 32, 24)
    assert a.shape == (24, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, game_frame(3, 32, 24))
    assert not np.array_equal(a, game_frame(4, 32, 24))
    assert a.std() > 10, "a frame must not be blank, or pack's blank filter drops it"


def test_write_frames_nests_and_numbers_them(tmp_path: Path) -> None:
    paths = write_frames(tmp_path, 4, 20, 10, start=5)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "run2/frame_00005.png", "run0/frame_00006.png", "run1/frame_00007.png", "run2/frame_00008.png",
    ]  # fmt: skip
    np.testing.assert_array_equal(np.asarray(Image.open(paths[1])), game_frame(6, 20, 10))
