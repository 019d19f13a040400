"""Pack's stage 2: blanks and duplicates dropped and counted, the seeded val split, the shard cut."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from shardgan.chunks import EncodeOptions
from shardgan.cut import CutOptions
from shardgan.errors import ConfigError
from shardgan.frames import FrameSpec
from shardgan.manifest import load_manifest
from shardgan.pack import PackOptions
from shardgan.shards import read_sample
from shardgan.synthetic import write_frames

from .pack_runs import pack, read_webdataset


def test_val_split_seed_and_shard_size_cut(tmp_path: Path) -> None:
    write_frames(tmp_path / "src", 30)
    pack(tmp_path / "src", tmp_path / "a", PackOptions(EncodeOptions(FrameSpec(40, 30)), CutOptions(val=6, seed=1, shard_size_bytes=20_000)))
    pack(tmp_path / "src", tmp_path / "b", PackOptions(EncodeOptions(FrameSpec(40, 30)), CutOptions(val=6, seed=2, shard_size_bytes=20_000)))
    manifest = load_manifest(tmp_path / "a")
    train, val = ({s["__key__"] for s in read_webdataset(tmp_path / d, split)} for d, split in [("a", "train"), ("a", "val")])
    assert len(val) == 6 and len(train) == 24 and not train & val
    assert len(manifest.split("train").shards) > 1
    for shard in manifest.split("train").shards[:-1]:
        assert shard.num_bytes <= 20_000 + 10_240  # target plus the tar end-of-archive record
    with open(tmp_path / "a" / manifest.split("train").shards[0].name, "rb") as f:
        shard = manifest.split("train").shards[0]
        keys = [read_sample(f, shard.offsets[i], shard.offsets[i + 1])["__key__"] for i in range(shard.num_samples)]
    assert keys == [s["__key__"] for s in read_webdataset(tmp_path / "a")][: shard.num_samples]
    assert [s["__key__"] for s in read_webdataset(tmp_path / "b")] != [s["__key__"] for s in read_webdataset(tmp_path / "a")]


def test_blank_and_duplicate_frames_are_dropped_and_counted(tmp_path: Path) -> None:
    paths = write_frames(tmp_path / "src", 20)
    shutil.copy(paths[3], tmp_path / "src" / "zz_copy_of_3.png")
    Image.new("RGB", (160, 120)).save(tmp_path / "src" / "black.png")
    Image.new("RGB", (160, 120), (255, 255, 255)).save(tmp_path / "src" / "white.png")
    pack(tmp_path / "src", tmp_path / "dst")
    manifest = load_manifest(tmp_path / "dst")
    assert manifest.filtered == {"blank": 2, "duplicate": 1} and manifest.split("train").num_samples == 20
    srcs = {json.loads(s["json"])["src"] for s in read_webdataset(tmp_path / "dst")}
    assert paths[3].relative_to(tmp_path / "src").as_posix() in srcs and "zz_copy_of_3.png" not in srcs
    pack(tmp_path / "src", tmp_path / "keep", PackOptions(EncodeOptions(FrameSpec(40, 30), blank_threshold=0), CutOptions(samples_per_shard=8)))
    assert load_manifest(tmp_path / "keep").filtered == {"blank": 0, "duplicate": 1}


@pytest.mark.parametrize(
    ("options", "message"),
    [({"val": 1.5}, "--val must be a count or a fraction"), ({"samples_per_shard": 0}, "--samples-per-shard must be >= 1"), ({"shard_size_bytes": 0}, "--shard-size must be positive, got 0")],
)
def test_cut_options_are_checked_by_flag(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CutOptions(**options)
