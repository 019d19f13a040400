"""Training data over http from a real server on 127.0.0.1: the same batches as local files with a
cold or warm cache, exact restore, faults survived or reported in one line, the val split, s3."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from shardgan.config import DataConfig
from shardgan.errors import DataError
from shardgan.loader import ShardLoader
from shardgan.quality import load_real_images

from .conftest import PYTHON, build_dataset
from .http_server import serve
from .test_loader import SIZES, all_ranks_epoch, make_loader, take
from .trainer_runs import ENV, STEPS, assert_same_final, checkpoint_exists, newest_step, train_args, train_inprocess, wait_for

PATTERN = "train-{000000..000003}.tar"
FAST = {"fetch_attempts": 3, "fetch_backoff_s": 0.01, "fetch_timeout_s": 0.5}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("remote")
    build_dataset(directory, SIZES, val_sizes=(6, 4))
    return directory


@pytest.fixture
def server(dataset: Path):
    with serve(dataset, slow_s=1.5) as srv:
        yield srv


def test_http_epoch_equals_local_files_with_a_cold_and_a_warm_cache(dataset, server, tmp_path):
    local = all_ranks_epoch(dataset, 2, batch_size=3)
    url, cache = f"{server.url}/{PATTERN}", str(tmp_path / "cache")
    assert all_ranks_epoch(url, 2, batch_size=3, num_workers=2, cache_dir=cache, **FAST) == local
    assert {server.requests[f"train-{i:06d}.tar"] for i in range(4)} == {1}  # 2 ranks x 2 workers, one download
    assert all_ranks_epoch(url, 2, batch_size=3, num_workers=2, cache_dir=cache, **FAST) == local
    assert server.shard_requests() == 4  # warm: nothing fetched again


@pytest.mark.parametrize("workers_before,workers_after", [(0, 2), (2, 1)])
def test_http_restore_is_exact(dataset, server, tmp_path, workers_before, workers_after):
    url, cache = f"{server.url}/{PATTERN}", {"cache_dir": str(tmp_path / "cache"), **FAST}
    uninterrupted = take(make_loader(dataset, rank=1, world_size=2), 22)
    before = make_loader(url, rank=1, world_size=2, num_workers=workers_before, **cache)
    assert take(before, 7) == uninterrupted[:7]
    shutil.rmtree(tmp_path / "cache")  # resumed on another node: cold cache
    after = make_loader(url, rank=1, world_size=2, num_workers=workers_after, **cache)
    after.load_state_dict(before.state_dict())
    assert take(after, 15) == uninterrupted[7:]


def test_faults_during_an_epoch_are_retried_and_change_nothing(dataset, server, tmp_path):
    local = all_ranks_epoch(dataset, 1, batch_size=4)
    for i, faults in enumerate([["drop"], ["500", "500"], ["slow"], ["corrupt", "drop"]]):
        server.once[f"train-{i:06d}.tar"] = faults
    url = f"{server.url}/{PATTERN}"
    assert all_ranks_epoch(url, 1, batch_size=4, num_workers=2, cache_dir=str(tmp_path / "cache"), **FAST) == local
    assert [server.requests[f"train-{i:06d}.tar"] for i in range(4)] == [2, 3, 2, 3]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_shard_that_stays_bad_stops_training_in_one_line(dataset, server, tmp_path, num_workers):
    server.always["train-000002.tar"] = "corrupt"
    loader = make_loader(f"{server.url}/{PATTERN}", batch_size=4, num_workers=num_workers, cache_dir=str(tmp_path / "c"), **FAST)
    with pytest.raises(DataError) as err:
        list(loader)
    assert str(err.value).startswith(f"cannot fetch {server.url}/train-000002.tar: sha256 ")
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "c").glob("train-000002-*"))


def test_manifest_is_fetched_from_beside_the_shards(dataset, server, tmp_path):
    loader = make_loader(f"{server.url}/{PATTERN}", cache_dir=str(tmp_path), **FAST)
    assert loader.manifest.origin == f"{server.url}/manifest.json" and server.requests["manifest.json"] == 1
    server.always["manifest.json"] = "500"
    with pytest.raises(DataError, match=rf"cannot fetch {server.url}/manifest.json: HTTP 500 .*\(gave up after 3 tries\)"):
        make_loader(f"{server.url}/{PATTERN}", cache_dir=str(tmp_path), **FAST)


@pytest.mark.parametrize("kind", ["http", "brace"])
def test_val_split_of_url_and_brace_pattern_shards(dataset, server, tmp_path, kind):
    shards = f"{server.url}/train-{{000001..000002}}.tar" if kind == "http" else f"{dataset}/train-{{000001..000002}}.tar"
    cfg = DataConfig(shards=shards, batch_size=2, num_workers=0, pin_memory=False, cache_dir=str(tmp_path), **FAST)
    keys = sorted(k for b in ShardLoader(cfg, split="val") for k in b["key"])  # data.split stays train
    assert keys == [f"{i:09d}" for i in range(45, 55)]  # val holds samples 45..54 in 2 shards
    assert torch.equal(load_real_images(cfg, 8), load_real_images(DataConfig(shards=str(dataset)), 8))
