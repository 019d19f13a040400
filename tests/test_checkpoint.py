"""Checkpoint files: complete or absent, keep-last-K, corrupt newest refused by name, safe loading."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shardgan import checkpoint as ckpt
from shardgan.errors import CheckpointError
from shardgan.rng import capture_global_states


def fake_state(step: int) -> dict[str, Any]:
    state: dict[str, Any] = {k: {} for k in ckpt.REQUIRED}
    state[ckpt.G] = {"w": torch.full((4, 4), float(step))}
    state[ckpt.STEP] = step
    state[ckpt.RNG] = [capture_global_states(torch.device("cpu"))]
    return state


def write_steps(directory: Path, steps: list[int], keep_last: int = 10) -> None:
    for step in steps:
        ckpt.save(directory, step, fake_state(step), keep_last)


def test_round_trip_and_keep_last(tmp_path: Path) -> None:
    write_steps(tmp_path, [1, 2, 3, 4, 5], keep_last=3)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [ckpt.checkpoint_name(s) for s in (5, 4, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"step_{s:08d}.{ext}" for s in (3, 4, 5) for ext in ("pt", "json")
    )
    state, path = ckpt.load_newest(tmp_path)
    assert path.name == ckpt.checkpoint_name(5)
    assert state[ckpt.STEP] == 5 and torch.equal(state[ckpt.G]["w"], torch.full((4, 4), 5.0))


class Exploit:
    """Unpickling this would run code (create a file); a safe loader must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


@pytest.mark.parametrize("corrupt", [truncate, random_bytes], ids=["truncated", "random-bytes"])
def test_corrupt_newest_falls_back_with_warning(tmp_path: Path, corrupt, caplog: pytest.LogCaptureFixture) -> None:
    write_steps(tmp_path, [10, 20])
    newest = tmp_path / ckpt.checkpoint_name(20)
    corrupt(newest)
    with caplog.at_level(logging.WARNING, logger="shardgan"):
        state, path = ckpt.load_newest(tmp_path)
    assert state[ckpt.STEP] == 10 and path.name == ckpt.checkpoint_name(10)
    assert str(newest) in caplog.text


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_code_running_pickle_is_refused_even_with_matching_checksum(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An attacker who rewrites the metadata too still only gets a refusal from weights_only."""
    write_steps(tmp_path, [10, 20])
    marker = tmp_path / "pwned"
    newest = tmp_path / ckpt.checkpoint_name(20)
    for payload in (pickle.dumps({"format": ckpt.FORMAT, "x": Exploit(marker)}), b""):
        if payload:
            newest.write_bytes(payload)
        else:  # the same exploit inside torch's zip format
            torch.save({"format": ckpt.FORMAT, "x": Exploit(marker)}, newest)
        data = newest.read_bytes()
        newest.with_suffix(".json").write_text(json.dumps({"num_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}))
        with caplog.at_level(logging.WARNING, logger="shardgan"):
            state, path = ckpt.load_newest(tmp_path)
        assert state[ckpt.STEP] == 10
        assert "refused by the safe loader" in caplog.text and str(newest) in caplog.text
        assert not marker.exists()


def test_metadata_is_checked_against_the_checkpoint_it_describes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The .json's format, version and step are read back: one describing another step is refused."""
    write_steps(tmp_path, [10, 20])
    meta_path = tmp_path / "step_00000020.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "step": 10}))
    with pytest.raises(CheckpointError, match=r"step_00000020.json describes another checkpoint \(step 10, this one holds step 20\)"):
        ckpt.load_file(tmp_path / "step_00000020.pt")
    with caplog.at_level(logging.WARNING, logger="shardgan"):
        state, path = ckpt.load_newest(tmp_path)
    assert state[ckpt.STEP] == 10 and "describes another checkpoint" in caplog.text


def test_checkpoint_without_metadata_does_not_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A kill between writing the .pt and its .json leaves an incomplete checkpoint: never loaded."""
    write_steps(tmp_path, [10, 20])
    (tmp_path / "step_00000020.json").unlink()
    (tmp_path / ".step_00000030.pt.1234.tmp").write_bytes(b"partial")  # a killed writer's temp
    with caplog.at_level(logging.WARNING, logger="shardgan"):
        assert ckpt.load_newest(tmp_path)[0][ckpt.STEP] == 10
    assert "incomplete" in caplog.text
    write_steps(tmp_path, [40])  # the next save clears stale temps
    assert not list(tmp_path.glob("*.tmp"))


def test_only_corrupt_checkpoints_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    write_steps(tmp_path, [10])
    truncate(tmp_path / ckpt.checkpoint_name(10))
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        ckpt.load_newest(tmp_path)
    assert ckpt.load_newest(tmp_path / "empty") is None


@pytest.mark.parametrize("fail_on", [1, 2], ids=["during-data", "during-metadata"])
def test_disk_full_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_on: int) -> None:
    write_steps(tmp_path, [10])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    calls = {"n": 0}
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == fail_on:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match=r"No space left on device.*previous checkpoint kept: step_00000010.pt"):
        ckpt.save(tmp_path, 20, fake_state(20), keep_last=1)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing new, nothing lost
    assert ckpt.load_newest(tmp_path)[0][ckpt.STEP] == 10


def orphan(directory: Path, step: int) -> Path:
    """A .pt whose .json was never written (a kill between the two)."""
    ckpt.save(directory, step, fake_state(step), keep_last=100)
    (directory / f"step_{step:08d}.json").unlink()
    return directory / ckpt.checkpoint_name(step)


def test_pruning_counts_only_complete_checkpoints_and_keeps_the_new_one(tmp_path: Path) -> None:
    write_steps(tmp_path, [20])
    orphan(tmp_path, 30)
    ckpt.save(tmp_path, 25, fake_state(25), keep_last=1)  # resumed from 20 past the orphan 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000025.json", "step_00000025.pt"]
    assert ckpt.load_newest(tmp_path)[0][ckpt.STEP] == 25


def test_pruning_never_deletes_the_newest_complete_or_the_one_written(tmp_path: Path) -> None:
    write_steps(tmp_path, [10, 40])
    ckpt.save(tmp_path, 15, fake_state(15), keep_last=1)  # an older step written after a newer one
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000040.pt", "step_00000015.pt"]


def test_move_newer_aside_takes_orphans_and_complete_ones(tmp_path: Path) -> None:
    write_steps(tmp_path, [10, 20])
    orphan(tmp_path, 30)
    moved = ckpt.move_newer_aside(tmp_path, 10, tmp_path / "aside")
    assert sorted(p.name for p in moved) == ["step_00000020.pt", "step_00000030.pt"]
    assert sorted(p.name for p in (tmp_path / "aside").iterdir()) == ["step_00000020.json", "step_00000020.pt", "step_00000030.pt"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000010.pt"]


def test_missing_checkpoint_is_not_found_not_incomplete(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {tmp_path / 'nope.pt'}"):
        ckpt.load_file(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="incomplete"):
        ckpt.load_file(orphan(tmp_path, 3))


def test_a_garbage_file_is_not_called_an_incomplete_checkpoint(tmp_path: Path) -> None:
    garbage = tmp_path / "notes.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"notes.pt: not a shardgan checkpoint \(not a torch.save file"):
        ckpt.load_file(garbage)
    write_steps(tmp_path / "run", [3])
    (tmp_path / "run" / "step_00000003.json").unlink()
    with pytest.raises(CheckpointError, match=r"step_00000003.pt: incomplete \(missing step_00000003.json\)"):
        ckpt.load_file(tmp_path / "run" / "step_00000003.pt")
    assert garbage.read_bytes() == b"not a checkpoint at all"
