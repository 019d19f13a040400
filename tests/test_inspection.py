"""`shardgan inspect`: the summary, verify finding every kind of damage, and the contact sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shardgan.errors import DataError
from shardgan.frames import FrameSpec
from shardgan.inspection import inspect_dataset, summary_lines, verify_dataset
from shardgan.manifest import load_manifest
from shardgan.pack import PackOptions
from shardgan.synthetic import write_frames

from .conftest import build_dataset
from .test_pack import pack


def test_inspect_verify_and_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_frames(tmp_path / "src", 20)
    pack(tmp_path / "src", tmp_path / "dst", PackOptions(FrameSpec(40, 30), samples_per_shard=8, val=4))
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
    problems = verify_dataset(manifest)
    assert any("sha256" in p for p in problems) and any("sample 2" in p for p in problems), problems
    with pytest.raises(DataError, match="verify found"):
        inspect_dataset(tmp_path / "dst", verify=True)


def test_verify_names_missing_and_truncated_shards_and_a_missing_image_member(tmp_path: Path) -> None:
    manifest = build_dataset(tmp_path, [3, 3, 3])
    first, second, third = manifest.split("train").shards
    (tmp_path / first.name).unlink()
    (tmp_path / second.name).write_bytes((tmp_path / second.name).read_bytes()[:-10240])
    manifest.image_format = "raw"  # the third shard's samples hold .png members, not the .npy raw needs
    problems = verify_dataset(manifest)
    assert f"{tmp_path / first.name}: missing" in problems
    assert any(p.startswith(f"{tmp_path / second.name}: ") and "bytes, manifest says" in p for p in problems), problems
    assert f"{tmp_path / third.name}: sample 0: no .npy member" in problems


def test_summary_lists_splits_filters_and_the_first_skipped_inputs(tmp_path: Path) -> None:
    manifest = build_dataset(tmp_path, [4, 2], val_sizes=(3,))
    manifest.filtered = {"blank": 2, "duplicate": 1}
    manifest.skipped = [{"path": f"bad{i}.png", "reason": "corrupt: x"} for i in range(12)]
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
