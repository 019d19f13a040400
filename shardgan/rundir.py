"""Every output path of a run, in one place (`runs/<run.name>/...`), and its log files."""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import write_bytes_atomic


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def architecture(self) -> Path:
        return self.root / "architecture.txt"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def eval_metrics(self) -> Path:
        return self.root / "eval.jsonl"

    @property
    def train_batch(self) -> Path:
        return self.root / "train_batch.png"

    @property
    def loss_curve(self) -> Path:
        return self.root / "loss_curve.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best_checkpoints(self) -> Path:
        """The checkpoint with the lowest SWD so far (a full one: it can be resumed or evaluated)."""
        return self.checkpoints / "best"

    @property
    def rollback(self) -> Path:
        """The checkpoint an explicit checkpoint.resume=PATH rolled this run back to (path + sha256)."""
        return self.checkpoints / "rollback.json"

    def abandoned(self, stamp: str) -> Path:
        """Where a rollback moves the checkpoints and metrics past the resumed step."""
        return self.checkpoints / f"abandoned-{stamp}"

    @property
    def swd_curve(self) -> Path:
        return self.root / "swd_curve.png"

    @property
    def generated(self) -> Path:
        return self.root / "generated"

    def sample(self, step: int) -> Path:
        return self.samples / f"step_{step:06d}.png"

    def create(self) -> None:
        for d in (self.root, self.samples, self.checkpoints):
            d.mkdir(parents=True, exist_ok=True)


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records in order; a line cut short by a kill mid-append is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records past `last_step`: a resumed run redoes those steps and logs them again."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r["step"] <= last_step]
        write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


@contextlib.contextmanager
def logging_setup(is_main: bool) -> Iterator[Callable[[RunDir], None]]:
    """stderr on every rank (rank > 0: warnings only). On rank 0, records are held in memory until
    the run directory exists (a refused start writes nothing), then they and all later ones go to
    train.log: call the yielded function with the run directory."""
    log = logging.getLogger("shardgan")
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    held = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    handlers: list[logging.Handler] = [stream, held] if is_main else [stream]

    def to_file(rd: RunDir) -> None:
        if is_main:
            file = logging.FileHandler(rd.log)
            file.setFormatter(fmt)
            held.setTarget(file)
            held.flush()
            log.removeHandler(held)
            log.addHandler(file)
            handlers.append(file)

    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    level, propagate = log.level, log.propagate
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    try:
        yield to_file
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(level)
        log.propagate = propagate
