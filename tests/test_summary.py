"""A pack's closing report: what it did, and where its seconds went."""

from __future__ import annotations

from pathlib import Path

from shardgan.pack import pack_dataset
from shardgan.summary import Outcome
from shardgan.synthetic import write_frames

from .pack_runs import SMALL


def test_summary_profiles_every_stage(tmp_path: Path) -> None:
    write_frames(tmp_path / "src", 20)
    summary = pack_dataset(tmp_path / "src", tmp_path / "dst", SMALL, workers=2, log=lambda line: None)
    stages = summary.stage_seconds
    assert all(stages[s] > 0 for s in ("decode", "resize", "filter", "encode", "chunk write"))
    main = sum(stages[s] for s in ("scan", "start-up", "encode stage", "write stage", "clean-up"))
    assert 0.9 * summary.seconds <= main <= summary.seconds


def test_summary_says_what_the_pack_did(tmp_path: Path) -> None:
    write_frames(tmp_path / "src", 20)
    (tmp_path / "src" / "bad.png").write_bytes(b"not a png")
    lines: list[str] = []
    part = pack_dataset(tmp_path / "src", tmp_path / "dst", SMALL, part=(1, 2), log=lines.append)
    assert part.outcome is Outcome.PART_ENCODED and part.chunks == (1, 3)
    assert lines[-1].startswith("part 1/2: 1 of 3 chunks encoded in ") and lines[-1].endswith("run with --merge once all parts are done")
    packed = pack_dataset(tmp_path / "src", tmp_path / "dst", SMALL, log=lines.append)
    assert packed.outcome is Outcome.PACKED and packed.packed == {"train": 20, "val": 0} and lines[-4].startswith("packed 20 train from 21 inputs")
    assert lines[-1] == "skipped: 1 not an image" and packed.skipped == {"not an image": 1}
    again = pack_dataset(tmp_path / "src", tmp_path / "dst", SMALL, log=lines.append)
    assert again.outcome is Outcome.ALREADY_PACKED and lines[-1] == f"{tmp_path / 'dst'} is already packed with these inputs and options; nothing to do"
