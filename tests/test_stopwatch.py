"""Stopwatch: each lap's time goes to its stage, summed over laps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import shardgan.stopwatch
from shardgan.stopwatch import Stopwatch


def test_laps_book_the_time_since_the_previous_lap(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([10.0, 10.5, 12.0, 12.25, 13.0])
    monkeypatch.setattr(shardgan.stopwatch, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    clock = Stopwatch()  # starts at 10.0
    clock.lap("decode")  # 0.5
    clock.lap("resize")  # 1.5
    clock.lap("decode")  # 0.25
    clock.lap("encode")  # 0.75
    assert clock.seconds == {"decode": 0.75, "resize": 1.5, "encode": 0.75}
