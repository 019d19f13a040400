"""Training data over http from a real server on 127.0.0.1: the same batches as local files with a
cold or warm cache, exact restore, faults survived or reported in one line, the val split, s3."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

import shardgan.fetch as fetching
from shardgan.config import DataConfig
from shardgan.errors import DataError
from shardgan.loader import ShardLoader
from shardgan.evaluate import load_real_images

from .conftest import PYTHON, build_dataset, survivors
from .http_server import serve
from .loader_runs import SIZES, all_ranks_epoch, make_loader, run_torchrun, take
from .trainer_runs import ENV, STEPS, assert_same_final, checkpoint_exists, newest_step, process_tree, train_args, train_inprocess, wait_for

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


@pytest.fixture
def s3_endpoint(monkeypatch):
    """A moto S3 server on 127.0.0.1 (the `s3` extra's boto3 talks to it via AWS_ENDPOINT_URL)."""
    pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    fetching._s3_client.cache_clear()  # a client holds its endpoint
    yield
    fetching._s3_client.cache_clear()
    server.stop()


def test_s3_shards_from_a_local_s3_server_equal_local_files(dataset, s3_endpoint, tmp_path):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="frames")
    for path in dataset.iterdir():
        s3.upload_file(str(path), "frames", f"packed/{path.name}")
    url = f"s3://frames/packed/{PATTERN}"
    assert all_ranks_epoch(url, 2, batch_size=3, num_workers=1, cache_dir=str(tmp_path), **FAST) == all_ranks_epoch(dataset, 2, batch_size=3)
    cfg = DataConfig(shards=url, cache_dir=str(tmp_path), **FAST)
    assert torch.equal(load_real_images(cfg, 8), load_real_images(DataConfig(shards=str(dataset)), 8))
    with pytest.raises(DataError, match="cannot fetch s3://frames/packed/nope/manifest.json: NoSuchKey"):
        make_loader("s3://frames/packed/nope/train-000000.tar", cache_dir=str(tmp_path), **FAST)


@pytest.mark.multiproc
@pytest.mark.slow
def test_training_from_http_killed_and_resumed_on_a_cold_cache_equals_local_disk(tiny_shards, straight, tmp_path):
    """`straight` trained from local files; this run streams over http with faults, is killed
    after a checkpoint, and resumes with an empty cache (another node): bit-identical end."""
    run, cache = tmp_path / "http", tmp_path / "cache"
    with serve(tiny_shards) as server:
        server.once["train-000001.tar"] = ["drop", "500"]
        url = f"{server.url}/train-{{000000..000002}}.tar"
        extra = (f"data.cache_dir={cache}", "data.fetch_backoff_s=0.05")
        proc = subprocess.Popen([PYTHON, "-m", "shardgan.train", *train_args(url, run, *extra)], env=ENV, stderr=subprocess.DEVNULL, start_new_session=True)
        # killed once a checkpoint is written and the faults were met: shard 1 is first read after
        # step 10, so only the prefetcher's retries meet them, which a fast step 10 can outrun
        wait_for(lambda: checkpoint_exists(run, 10) and server.requests["train-000001.tar"] >= 3, proc)
        group = process_tree(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its reading processes, as a node dies
        proc.wait()
        assert not survivors(group)  # none still writing into the cache removed below
        assert newest_step(run) < STEPS
        assert server.requests["train-000001.tar"] >= 3  # the faults were met
        shutil.rmtree(cache)
        assert train_inprocess(url, run, *extra) == 0
    assert_same_final(straight, run)


@pytest.mark.multiproc
@pytest.mark.slow
def test_torchrun_ranks_over_http_equal_local_files_and_share_each_download(dataset, server, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the ranks' default cache directory lands here
    reports = run_torchrun(f"{server.url}/{PATTERN}", tmp_path)
    assert [r["keys"] for r in reports] == all_ranks_epoch(dataset, 2, batch_size=3)
    assert {server.requests[f"train-{i:06d}.tar"] for i in range(4)} == {1}
    assert len(list((tmp_path / f"shardgan-cache-{os.getuid()}").glob("train-*.tar"))) == 4


def test_a_cache_limit_below_an_epoch_is_said_once_at_start(dataset, server, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="shardgan.loader"):
        loader = make_loader(f"{server.url}/{PATTERN}", batch_size=3, cache_dir=str(tmp_path), cache_limit="1KB")
    loader.close()
    lines = [r.getMessage() for r in caplog.records if "every epoch downloads them again" in r.getMessage()]
    assert len(lines) == 1 and "limited to 0.0 MB" in lines[0], lines
