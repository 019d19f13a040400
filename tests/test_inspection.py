"""`shardgan inspect`: the summary, verify finding every kind of damage, and the contact sheet."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shardgan.chunks import EncodeOptions
from shardgan.cut import CutOptions
from shardgan.errors import DataError
from shardgan.frames import FrameSpec, Skip
from shardgan.inspection import inspect_dataset, summary_lines, verify_dataset
from shardgan.manifest import load_manifest
from shardgan.pack import PackOptions
from shardgan.shards import read_sample
from shardgan.synthetic import write_frames

from .conftest import build_dataset
from .pack_runs import pack


def test_inspect_verify_and_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_frames(tmp_path / "src", 20)
    pack(tmp_path / "src", tmp_path / "dst", PackOptions(EncodeOptions(FrameSpec(40, 30)), CutOptions(samples_per_shard=8, val=4)))
    inspect_dataset(tmp_path / "dst", verify=True, grid=tmp_path / "grid.png", grid_count=9)
    out = capsys.readouterr().out
    assert "train: 16 samples in 2 shards" in out and "val: 4 samples" in out and "verified: all 20" in out
    assert Image.open(tmp_path / "grid.png").size == (3 * 42 + 2, 3 * 32 + 2)
    manifest = load_manifest(tmp_path / "dst")
    shard = manifest.split("train").shards[1]
    path = tmp_path / "dst" / shard.name
    data = bytearray(path.read_bytes())
    data[shard.offsets[2] + 1024 + 40] ^= 0xFF  # inside sample 2's image bytes
    path.write_bytes(bytes(data))
    (bad,) = [v for v in verify_dataset(manifest) if v.problem]
    assert bad.path == path and bad.lost == 1, bad
    assert f"first bad sample 2 at bytes {shard.offsets[2]}..{shard.offsets[3]}: " in bad.problem and "sha256 differs" in bad.problem
    with pytest.raises(DataError, match="verify found 1 bad of 3 shards in .*, 1 samples lost"):
        inspect_dataset(tmp_path / "dst", verify=True)


def test_verify_names_missing_and_truncated_shards_and_a_missing_image_member(tmp_path: Path) -> None:
    manifest = build_dataset(tmp_path, [3, 3, 3])
    first, second, third = manifest.split("train").shards
    (tmp_path / first.name).unlink()
    (tmp_path / second.name).write_bytes((tmp_path / second.name).read_bytes()[:-10240])
    manifest.image_format = "raw"  # the third shard's samples hold .png members, not the .npy raw needs
    lines = [v.line() for v in verify_dataset(manifest)]
    assert lines[0] == f"{tmp_path / first.name}: BAD: missing; 3 of 3 samples lost"
    assert lines[1].startswith(f"{tmp_path / second.name}: BAD: cut short: ends at byte {second.num_bytes - 10240} of {second.num_bytes}; ")
    assert lines[2].startswith(f"{tmp_path / third.name}: BAD: first bad sample 0 at bytes 0..{third.offsets[1]}: no .npy member")
    assert lines[2].endswith("; 3 of 3 samples lost")


def test_summary_lists_splits_filters_and_the_first_skipped_inputs(tmp_path: Path) -> None:
    manifest = build_dataset(tmp_path, [4, 2], val_sizes=(3,))
    manifest.filtered = {"blank": 2, "duplicate": 1}
    manifest.skipped = [Skip(f"bad{i}.png", "corrupt: x") for i in range(12)]
    lines = summary_lines(manifest, max_skipped=10)
    assert lines[0] == f"dataset {tmp_path}: 16x12x3 png, 9 inputs"
    assert lines[1].startswith("  train: 6 samples in 2 shards, ")
    assert lines[2].startswith("  val: 3 samples in 1 shards")
    assert "  filtered: 2 blank, 1 duplicate" in lines and "  skipped: 12 inputs" in lines
    assert "    bad9.png: corrupt: x" in lines and "    bad10.png: corrupt: x" not in lines
    assert lines[-1].startswith("    ... and 2 more")


def test_contact_sheet_same_seed_same_samples(tmp_path: Path) -> None:
    build_dataset(tmp_path / "d", [5, 5])
    sheets = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        inspect_dataset(tmp_path / "d", grid=tmp_path / f"{name}.png", grid_count=4, seed=seed)
        sheets.append(np.asarray(Image.open(tmp_path / f"{name}.png")))
    np.testing.assert_array_equal(sheets[0], sheets[1])
    assert not np.array_equal(sheets[0], sheets[2])


def test_verify_summarizes_a_truncated_shard_in_one_line_with_the_right_bytes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = build_dataset(tmp_path, [4, 9], image_format="raw")
    good, cut = manifest.split("train").shards
    end = int(cut.offsets[5]) + 100  # sample 5 cut inside, 6..8 gone
    os.truncate(tmp_path / cut.name, end)
    with pytest.raises(DataError, match="verify found 1 bad of 2 shards in .*, 4 samples lost"):
        inspect_dataset(tmp_path, verify=True)
    lines = capsys.readouterr().out.splitlines()[-2:]
    assert lines[0] == f"{tmp_path / good.name}: OK, 4 samples"
    assert lines[1] == (
        f"{tmp_path / cut.name}: BAD: cut short: ends at byte {end} of {cut.num_bytes}; first bad sample 5 at bytes "
        f"{cut.offsets[5]}..{cut.offsets[6]}: shard ends at byte {end}, sample needs bytes {cut.offsets[5]}..{cut.offsets[6]}; "
        "sha256 differs from the manifest's; 4 of 9 samples lost"
    )
    with open(tmp_path / cut.name, "rb") as f, pytest.raises(ValueError, match=f"shard ends at byte {end}, "):
        read_sample(f, cut.offsets[7], cut.offsets[8])  # wholly past the end: still the real end, not its own start
