"""What a `shardgan pack` did: its outcome, counts and seconds, and the closing lines it prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .manifest import Manifest


class Outcome(Enum):
    """What a `pack_dataset` call did."""

    PACKED = "packed"
    """Shards and manifest written (both stages, or the write stage after --part runs)."""
    ALREADY_PACKED = "already packed"
    """DST already held this exact pack: nothing done."""
    PART_ENCODED = "part encoded"
    """--part: this part's chunks encoded; no shards yet."""


@dataclass
class PackSummary:
    """What a pack did, for the closing report (and for tests and the benchmark)."""

    outcome: Outcome = Outcome.PACKED
    dst: Path = Path(".")
    part: tuple[int, int] | None = None
    """--part I/N of a PART_ENCODED pack."""
    chunks: tuple[int, int] = (0, 0)
    """Chunks this run covered, of all the work list's (PART_ENCODED)."""
    inputs: int = 0
    frames_encoded: int = 0
    packed: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    shards: int = 0
    num_bytes: int = 0
    seconds: float = 0.0
    stage_seconds: Counter = field(default_factory=Counter)
    """Main-process wall time of "scan", "start-up", "encode stage", "write stage", "clean-up", plus
    the workers' "decode", "resize", "filter", "encode" and "chunk write" seconds, summed over workers."""

    def add_manifest(self, manifest: Manifest) -> None:
        self.packed = {name: split.num_samples for name, split in manifest.splits.items()}
        self.filtered = manifest.filtered
        self.skipped = Counter(s.kind for s in manifest.skipped)
        self.shards = sum(len(split.shards) for split in manifest.splits.values())
        self.num_bytes = sum(split.num_bytes for split in manifest.splits.values())

    def lines(self) -> list[str]:
        if self.outcome is Outcome.ALREADY_PACKED:
            return [f"{self.dst} is already packed with these inputs and options; nothing to do"]
        if self.outcome is Outcome.PART_ENCODED:
            (i, n), (mine, total) = self.part, self.chunks
            return [f"part {i}/{n}: {mine} of {total} chunks encoded in {self.seconds:.1f}s; run with --merge once all parts are done"]
        packed = ", ".join(f"{n} {split}" for split, n in self.packed.items() if n) or "nothing"
        lines = [
            f"packed {packed} from {self.inputs} inputs in {self.seconds:.1f}s "
            f"({self.frames_encoded / max(self.seconds, 1e-9):.0f} frames/s encoded)",
            f"dropped: {self.filtered.get('blank', 0)} blank, {self.filtered.get('duplicate', 0)} duplicate",
            f"wrote {self.shards} shards, {self.num_bytes / 1e6:.1f} MB",
        ]
        if self.skipped:
            lines.append("skipped: " + ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common()))
        return lines
