"""resolve_source: where data.shards points (directory, manifest, pattern, URLs), checked at start-up."""

from __future__ import annotations

import pytest

from .conftest import build_dataset
from shardgan.config import DataConfig
from shardgan.errors import DataError
from shardgan.source import build_cache, is_url_pattern, resolve_source, split_location


def test_a_directory_a_manifest_path_and_a_pattern_name_the_same_shards(tmp_path):
    build_dataset(tmp_path, [4, 5, 6], val_sizes=(3,))
    by_dir = resolve_source(DataConfig(shards=str(tmp_path)), "train")
    by_manifest = resolve_source(DataConfig(shards=str(tmp_path / "manifest.json")), "train")
    by_pattern = resolve_source(DataConfig(shards=f"{tmp_path}/train-{{000000..000002}}.tar"), "train")
    assert [s.name for s in by_dir.shards] == [s.name for s in by_manifest.shards] == [s.name for s in by_pattern.shards]
    assert by_dir.fingerprint == by_pattern.fingerprint and by_dir.urls is None and build_cache(DataConfig(), by_dir) is None
    subset = resolve_source(DataConfig(shards=f"{tmp_path}/train-000001.tar"), "train")
    assert subset.num_samples == 5 and subset.fingerprint != by_dir.fingerprint
    val = resolve_source(DataConfig(shards=f"{tmp_path}/train-000001.tar"), "val")  # taken whole, from beside it
    assert val.num_samples == 3


def test_remote_shards_get_urls_and_a_cache(tmp_path):
    build_dataset(tmp_path / "d", [4, 5])
    cfg = DataConfig(shards=f"pipe:cat {tmp_path}/d/train-{{000000..000001}}.tar", cache_dir=str(tmp_path / "c"))
    source = resolve_source(cfg, "train")
    assert source.urls == (f"pipe:cat {tmp_path}/d/train-000000.tar", f"pipe:cat {tmp_path}/d/train-000001.tar")
    assert build_cache(cfg, source) is not None


def test_what_cannot_be_a_source_is_refused_at_start_up(tmp_path):
    build_dataset(tmp_path, [4])
    (tmp_path / "train-000000.tar").unlink()
    with pytest.raises(DataError, match="shard missing"):
        resolve_source(DataConfig(shards=str(tmp_path)), "train")
    with pytest.raises(DataError, match="no split 'val'"):
        resolve_source(DataConfig(shards=str(tmp_path)), "val")
    assert is_url_pattern("s3://b/x-{0..3}.tar") and not is_url_pattern(str(tmp_path))


def test_a_missing_dataset_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^data.shards=data/demo_shards: no such directory; point data.shards at a packed dataset"):
        resolve_source(DataConfig(), "train")
    with pytest.raises(DataError, match=r"^data.manifest=nowhere/manifest.json: no such directory"):
        resolve_source(DataConfig(manifest="nowhere/manifest.json"), "train")


def test_the_val_split_of_a_single_train_shard_is_named_beside_it(tmp_path):
    build_dataset(tmp_path, [4], val_sizes=(2,))
    for shards in (str(tmp_path / "train-000000.tar"), str(tmp_path), str(tmp_path / "train-{000000..000000}.tar")):
        assert split_location(DataConfig(shards=shards), "val") == str(tmp_path / "val-*.tar")
