"""Manifest: round trip, and every way it can be wrong gives one clear DataError."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from shardgan import cli
from shardgan.errors import DataError
from shardgan.frames import Skip
from shardgan.manifest import MANIFEST_NAME, check_shards_present, load_manifest

from .conftest import build_dataset


def test_roundtrip(tmp_path):
    written = build_dataset(tmp_path / "ds", [3, 5], val_sizes=(2,))
    loaded = load_manifest(tmp_path / "ds")
    assert loaded.to_json() == written.to_json()
    assert loaded.split("train").num_samples == 8 and loaded.split("val").num_samples == 2
    check_shards_present(loaded, "train")


def test_skipped_inputs_are_skips_in_code_and_path_reason_objects_on_disk(tmp_path):
    written = build_dataset(tmp_path / "ds", [2])
    written.skipped = [Skip("a/bad.png", "corrupt: x"), Skip("b.mp4", "corrupt video after frame 3: y")]
    written.write(tmp_path / "ds")
    on_disk = json.loads((tmp_path / "ds" / MANIFEST_NAME).read_text())["skipped"]
    assert on_disk == [{"path": "a/bad.png", "reason": "corrupt: x"}, {"path": "b.mp4", "reason": "corrupt video after frame 3: y"}]
    assert load_manifest(tmp_path / "ds").skipped == written.skipped


def _edit(path, **changes):
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"version": 99}, "manifest version 99 is not supported"),
        ({"format": "other"}, "not a shardgan manifest"),
        ({"image": {}}, "malformed manifest"),
    ],
)
def test_incompatible_manifest(tmp_path, change, message):
    build_dataset(tmp_path / "ds", [2])
    _edit(tmp_path / "ds" / MANIFEST_NAME, **change)
    with pytest.raises(DataError, match=message):
        load_manifest(tmp_path / "ds")


def test_missing_directory_manifest_and_split(tmp_path):
    with pytest.raises(DataError, match="shard directory not found"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no manifest.json"):
        load_manifest(tmp_path / "empty")
    (tmp_path / "empty" / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_manifest(tmp_path / "empty")
    build_dataset(tmp_path / "ds", [2])
    with pytest.raises(DataError, match="no split 'val'"):
        load_manifest(tmp_path / "ds").split("val")


def test_missing_or_truncated_shard_found_at_startup(tmp_path):
    manifest = build_dataset(tmp_path / "ds", [2, 2])
    shard = tmp_path / "ds" / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-000001.tar has .* bytes, manifest says"):
        check_shards_present(manifest, "train")
    shard.unlink()
    with pytest.raises(DataError, match="shard missing: .*train-000001.tar"):
        check_shards_present(manifest, "train")


def test_version_1_manifests_still_load(tmp_path):
    written = build_dataset(tmp_path / "ds", [3, 5], val_sizes=(2,))
    doc = written.to_json()
    for split in doc["splits"].values():  # version 1: a JSON list of offsets per shard
        del split["offsets"]
    for name, split in doc["splits"].items():
        for entry, shard in zip(split["shards"], written.split(name).shards):
            entry["offsets"] = list(shard.offsets)
    (tmp_path / "ds" / MANIFEST_NAME).write_text(json.dumps({**doc, "version": 1}))
    loaded = load_manifest(tmp_path / "ds")
    assert loaded.to_json() == written.to_json()
    assert [list(s.offsets) for s in loaded.split("train").shards] == [s.offsets for s in written.split("train").shards]


def test_offsets_are_views_of_one_small_array_per_split(tmp_path):
    build_dataset(tmp_path / "ds", [3, 5, 4])
    shards = load_manifest(tmp_path / "ds").split("train").shards
    base = shards[0].offsets.base
    assert base is not None and all(s.offsets.base is base for s in shards)
    assert shards[0].offsets.dtype == np.dtype("<u4") and len(base) == 3 + 5 + 4 + 3
    doc = json.loads((tmp_path / "ds" / MANIFEST_NAME).read_text())
    assert "offsets" not in doc["splits"]["train"]["shards"][0]


def test_offsets_that_do_not_add_up_are_refused(tmp_path):
    build_dataset(tmp_path / "ds", [3, 5])
    doc = json.loads((tmp_path / "ds" / MANIFEST_NAME).read_text())
    doc["splits"]["train"]["shards"][1]["num_samples"] = 6
    (tmp_path / "ds" / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(DataError, match="malformed manifest .*10 offsets for shards that need 11"):
        load_manifest(tmp_path / "ds")


def test_a_frames_folder_given_as_a_dataset_gets_a_pack_command_that_works_as_printed(frames_dir: Path, capsys) -> None:
    with pytest.raises(DataError) as refused:
        load_manifest(frames_dir)
    command = str(refused.value).split("to pack the frames in it: ")[1].split(", then")[0]
    words = shlex.split(command)
    assert words[:3] == ["shardgan", "pack", str(frames_dir)] and words[3] != str(frames_dir)
    assert cli.main(words[1:]) == 0, capsys.readouterr().err
    assert load_manifest(words[3]).splits["train"].num_samples > 0


def test_shards_without_a_manifest_are_an_unfinished_pack(tmp_path: Path) -> None:
    (tmp_path / "train-000000.tar").write_bytes(b"")
    with pytest.raises(DataError, match="unfinished pack"):
        load_manifest(tmp_path)
