"""Progress in job logs: where tqdm's bar is off (not a terminal), a plain line every N seconds.

A batch job's log otherwise stays empty until a long stage ends. The line is tqdm's own meter,
formatted without the bar: done/total, percent, rate and ETA.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tqdm import tqdm

LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {rate_fmt}, ETA {remaining}"
OPEN_FORMAT = "{desc}: {n_fmt} {unit}, {rate_fmt}"
"""Without a total (videos: frame counts unknown until read) there is no percent or ETA."""


class ProgressLines:
    """`update(n)` as on a tqdm bar; every `every_s` seconds (0: never) `write` gets one line.
    The rate is the average since the start, counting only what was done here (not `initial`)."""

    def __init__(self, desc: str, total: float | None, unit: str, every_s: float, write: Callable[[str], None], initial: float = 0) -> None:
        self.desc, self.total, self.unit, self.every_s, self.write = desc, total, unit, every_s, write
        self.n = self.initial = initial
        self.started = self.written_at = time.monotonic()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.every_s > 0 and now - self.written_at >= self.every_s:
            self.written_at = now
            self.write(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        meter = tqdm.format_meter(
            self.n, self.total, elapsed, prefix=self.desc, unit=self.unit, initial=self.initial,
            rate=(self.n - self.initial) / elapsed, bar_format=LINE_FORMAT if self.total else OPEN_FORMAT,
        )  # fmt: skip
        return " ".join(meter.split())  # tqdm pads short rates
