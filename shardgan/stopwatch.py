"""Where the time goes: seconds per pipeline stage, booked lap by lap (for `bench_pack.py --profile`)."""

from __future__ import annotations

import time
from collections import Counter


class Stopwatch:
    """`lap(stage)` books the time since the previous lap (or the start) to `stage`."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self._last
        self._last = now
