"""Loader faults: corrupt or truncated shards mid-epoch, missing shards, bad manifests."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from ..conftest import build_dataset, corrupt_images
from ..loader_runs import SIZES, make_loader, run_torchrun
from ..trainer_runs import train_inprocess
from shardgan.errors import CorruptSampleError, DataError
from shardgan.synthetic import game_frame


def epoch(shards: Path, world_size: int, **cfg) -> list[list[dict]]:
    """[rank][batch] -> {"key", "image"} for one epoch of every simulated rank."""
    return [
        [{"key": b["key"], "image": b["image"].clone()} for b in make_loader(shards, rank=r, world_size=world_size, **cfg)]
        for r in range(world_size)
    ]


def test_corrupt_samples_are_replaced_within_their_batch_and_reported(tmp_path, caplog):
    build_dataset(tmp_path, SIZES)
    clean = epoch(tmp_path, 2, batch_size=3)
    bad_keys = ["000000008", "000000011", "000000016"]  # all in train-000001.tar (samples 7..19)
    corrupt_images(tmp_path / "train-000001.tar", bad_keys)
    loaders = [make_loader(tmp_path, rank=r, world_size=2, batch_size=3, num_workers=2 - r) for r in range(2)]
    with caplog.at_level(logging.WARNING, logger="shardgan.loader"):
        got = [[{"key": b["key"], "image": b["image"].clone()} for b in loader] for loader in loaders]
    assert [len(r) for r in got] == [len(r) for r in clean]  # ranks stay in step
    reported = sorted((r.shard, r.key) for loader in loaders for r in loader.corrupt)
    assert reported == [("train-000001.tar", k) for k in bad_keys]
    assert all("train-000001.tar" in m and "skipped corrupt sample" in m for m in caplog.messages)
    for clean_rank, got_rank in zip(clean, got):
        for want, batch in zip(clean_rank, got_rank):
            good = [k for k in want["key"] if k not in bad_keys]
            assert [k for k, w in zip(batch["key"], want["key"]) if w not in bad_keys] == good
            assert set(batch["key"]) <= set(good)  # a bad slot holds a good sample of its own batch
            for image, key in zip(batch["image"], batch["key"]):
                np.testing.assert_array_equal(image.numpy(), game_frame(int(key), 16, 12).transpose(2, 0, 1))


def test_shard_truncated_mid_epoch_is_skipped_sample_by_sample(tmp_path):
    manifest = build_dataset(tmp_path, SIZES)
    shard = manifest.split("train").shards[3]  # samples 25..44
    loader = make_loader(tmp_path, batch_size=4)  # start-up checks pass
    os.truncate(tmp_path / shard.name, shard.offsets[17] + 600)  # cuts into sample 17 (after its header); 18, 19 gone
    batches = [b["key"] for b in loader]
    assert len(batches) == loader.batches_per_epoch
    assert sorted(r.key for r in loader.corrupt) == ["#18", "#19", "000000042"]
    assert {r.shard for r in loader.corrupt} == {shard.name}


def test_remote_shard_that_differs_from_the_manifest_stops_naming_its_url(tmp_path):
    manifest = build_dataset(tmp_path / "d", SIZES)
    shard = manifest.split("train").shards[3]
    os.truncate(tmp_path / "d" / shard.name, shard.offsets[17] + 100)
    pattern = f"pipe:cat {tmp_path}/d/train-{{000000..000003}}.tar"
    loader = make_loader(pattern, batch_size=4, cache_dir=str(tmp_path / "cache"), fetch_attempts=2, fetch_backoff_s=0.01)
    with pytest.raises(DataError) as err:
        list(loader)
    assert str(err.value).startswith(f"cannot fetch pipe:cat {tmp_path}/d/{shard.name}: got ")
    assert str(err.value).endswith("(gave up after 2 tries)") and "\n" not in str(err.value)
    assert not list((tmp_path / "cache").glob("train-000003-*"))  # never cached


def test_a_batch_with_no_good_sample_stops_naming_the_shard(tmp_path):
    build_dataset(tmp_path, [6])
    corrupt_images(tmp_path / "train-000000.tar", [f"{i:09d}" for i in range(6)])
    with pytest.raises(DataError, match=r"every sample of a batch is corrupt \(shards train-000000.tar"):
        list(make_loader(tmp_path, batch_size=2, num_workers=1))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_on_corrupt_fail_stops_with_shard_and_key(tmp_path, num_workers):
    build_dataset(tmp_path, SIZES)
    corrupt_images(tmp_path / "train-000002.tar", ["000000021"])
    loader = make_loader(tmp_path, on_corrupt="fail", num_workers=num_workers)
    with pytest.raises(CorruptSampleError) as err:
        list(loader)
    assert (err.value.shard, err.value.key) == ("train-000002.tar", "000000021")
    assert str(err.value).startswith("corrupt sample '000000021' in train-000002.tar: cannot decode png")
    assert "\n" not in str(err.value)


def test_missing_shard_is_an_error_at_start_up(tmp_path):
    build_dataset(tmp_path, SIZES)
    (tmp_path / "train-000002.tar").unlink()
    with pytest.raises(DataError, match=f"shard missing: {tmp_path}/train-000002.tar"):
        make_loader(tmp_path)


def test_shard_of_the_wrong_size_is_an_error_at_start_up(tmp_path):
    manifest = build_dataset(tmp_path, SIZES)
    size = manifest.split("train").shards[1].num_bytes
    os.truncate(tmp_path / "train-000001.tar", size - 512)
    with pytest.raises(DataError, match=f"train-000001.tar has {size - 512} bytes, manifest says {size}"):
        make_loader(tmp_path)


def test_manifest_of_another_version_is_an_error_at_start_up(tmp_path):
    build_dataset(tmp_path, SIZES)
    doc = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(DataError, match="manifest version 99 is not supported"):
        make_loader(tmp_path)


def test_missing_shard_directory_is_an_error_at_start_up(tmp_path):
    with pytest.raises(DataError, match=r"data.shards=\S*nope: no such directory"):
        make_loader(tmp_path / "nope")


@pytest.mark.multiproc
@pytest.mark.slow
def test_torchrun_ranks_stay_in_step_over_a_corrupt_shard(tmp_path):
    build_dataset(tmp_path / "shards", [11, 4, 17, 9])
    bad_keys = ["000000016", "000000020", "000000025"]  # in train-000002.tar (samples 15..31)
    corrupt_images(tmp_path / "shards" / "train-000002.tar", bad_keys)
    reports = run_torchrun(tmp_path / "shards", tmp_path)
    assert reports[0]["steps"] == reports[1]["steps"] == 41 // 6
    assert sorted(k for r in reports for _, k in r["corrupt"]) == bad_keys
    keys = [{k for batch in r["keys"] for k in batch} for r in reports]
    assert not keys[0] & keys[1] and not (keys[0] | keys[1]) & set(bad_keys)


LEFT_EARLY = """
import sys
from pathlib import Path
from shardgan.config import DataConfig
from shardgan.loader import ShardLoader

kept = []
loader = ShardLoader(DataConfig(shards=sys.argv[1], batch_size=2, num_workers=2, on_corrupt="fail"))
try:
    list(loader)
except Exception as e:
    kept.append(e)  # the traceback keeps the epoch's frames alive until exit
it = iter(ShardLoader(DataConfig(shards=sys.argv[1], batch_size=2, num_workers=2)))
next(it)  # and an epoch left after one batch, never closed
print("done", type(kept[0]).__name__, flush=True)
"""


@pytest.mark.multiproc
def test_a_process_whose_epoch_ended_early_still_exits(tmp_path):
    """DataLoader workers ignore SIGTERM (preemption is the trainer's), so multiprocessing's exit-time
    terminate() cannot stop them: the loader must stop its workers itself, or the process hangs."""
    import subprocess

    from ..conftest import PYTHON

    build_dataset(tmp_path, SIZES)
    corrupt_images(tmp_path / "train-000002.tar", ["000000021"])
    done = subprocess.run([PYTHON, "-c", LEFT_EARLY, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "done CorruptSampleError", done.stderr[-2000:]


def test_an_epoch_end_counts_the_corrupt_samples_it_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    build_dataset(tmp_path / "shards", [40, 37, 50], width=24, height=16)  # 127 samples, 15 batches of 8
    corrupt_images(tmp_path / "shards" / "train-000001.tar", ["000000041", "000000050", "000000060"])
    assert train_inprocess(tmp_path / "shards", tmp_path / "runs" / "bad", "train.max_steps=16") == 0
    err = capsys.readouterr().err
    named = err.split("epoch 0 done")[0].count("skipped corrupt sample")  # each named once; one may fall in the dropped remainder
    assert named >= 2, err
    assert f"epoch 0 done at step 15, {named} corrupt samples skipped (data.on_corrupt=skip; each was named above)" in err, err
