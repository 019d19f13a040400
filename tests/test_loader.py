"""ShardLoader: every sample once per epoch over ranks x workers, equal batches, exact resume."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import PYTHON, ROOT, build_dataset, write_tiny_shards
from .loader_runs import SIZES, all_ranks_epoch, make_loader, take
from shardgan.config import DataConfig
from shardgan.errors import DataError
from shardgan import loader as loader_module
from shardgan.loader import ShardLoader
from shardgan.shards import sample_key
from shardgan.synthetic import game_frame


def check_epoch(per_rank: list[list[list[str]]], num_samples: int, global_batch: int, nodes: int = 1) -> list[str]:
    """Equal batch counts, no duplicates, everything but a remainder < one global batch (+ nodes) used."""
    assert len({len(batches) for batches in per_rank}) == 1
    keys = [k for batches in per_rank for batch in batches for k in batch]
    assert len(keys) == len(set(keys))
    assert set(keys) <= {f"{i:09d}" for i in range(num_samples)}
    assert 0 <= num_samples - len(keys) < global_batch + nodes - 1
    return keys


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("shards")
    build_dataset(directory, SIZES)
    return directory


@pytest.mark.parametrize(
    "sizes,world_size,num_workers,batch_size",
    [
        (SIZES, 1, 0, 4),
        (SIZES, 3, 0, 3),
        ([3, 17, 1, 9, 30], 4, 0, 2),
        ([50], 8, 0, 2),  # fewer shards than ranks
        ([50], 8, 4, 1),  # 1 shard, 8 ranks x 4 real workers
        (SIZES, 2, 2, 3),
    ],
)
def test_epoch_uses_every_sample_once_with_equal_batches(tmp_path, sizes, world_size, num_workers, batch_size):
    build_dataset(tmp_path, sizes)
    per_rank = all_ranks_epoch(tmp_path, world_size, num_workers=num_workers, batch_size=batch_size)
    check_epoch(per_rank, sum(sizes), world_size * batch_size)


@pytest.mark.parametrize("image_format,channels,num_workers", [("png", 3, 0), ("raw", 3, 2), ("png", 1, 1), ("raw", 1, 0)])
def test_batches_hold_the_samples_named_by_their_keys(tmp_path, image_format, channels, num_workers):
    build_dataset(tmp_path, [5, 6], image_format=image_format, channels=channels)
    loader = make_loader(tmp_path, batch_size=3, num_workers=num_workers)
    for batch in loader:
        images = batch["image"]
        assert images.dtype == torch.uint8 and images.shape == (3, channels, 12, 16)
        assert images.is_contiguous(memory_format=torch.channels_last)
        for image, key in zip(images, batch["key"]):
            expected = game_frame(int(key), 16, 12)[:, :, :channels].transpose(2, 0, 1)
            np.testing.assert_array_equal(image.numpy(), expected)


def test_order_changes_per_epoch_and_repeats_per_seed(dataset):
    loader = make_loader(dataset)
    first, second = [b["key"] for b in loader], [b["key"] for b in loader]
    assert loader.epoch == 2
    assert first != second
    assert first == [b["key"] for b in make_loader(dataset)]
    assert first != [b["key"] for b in make_loader(dataset, seed=1)]


def test_len_counts_the_batches_left(dataset):
    loader = make_loader(dataset, rank=1, world_size=2)
    assert len(loader) == loader.batches_per_epoch == sum(SIZES) // 4
    take(loader, 3)
    assert len(loader) == loader.batches_per_epoch - 3 and loader.samples_seen == 12


@pytest.mark.parametrize(
    "k,workers_before,workers_after",
    [(0, 2, 0), (5, 0, 0), (5, 2, 3), (11, 0, 2), (14, 0, 0)],  # 11 batches per epoch: 11 = last batch
)
def test_restore_yields_exactly_the_rest_of_the_uninterrupted_run(dataset, k, workers_before, workers_after):
    uninterrupted = take(make_loader(dataset, rank=1, world_size=2), 22)
    before = make_loader(dataset, rank=1, world_size=2, num_workers=workers_before)
    assert take(before, k) == uninterrupted[:k]
    after = make_loader(dataset, rank=1, world_size=2, num_workers=workers_after)
    after.load_state_dict(before.state_dict())
    assert take(after, 22 - k) == uninterrupted[k:]


def test_state_after_the_last_batch_points_at_the_next_epoch(dataset):
    loader = make_loader(dataset, batch_size=4)
    it = iter(loader)
    for _ in range(loader.batches_per_epoch):
        next(it)
    state = loader.state_dict()
    assert (state["epoch"], state["samples_seen"]) == (1, 0)
    assert loader.epoch == 0  # the batch just handed out still belongs to epoch 0
    next(it, None)
    assert (loader.epoch, loader.samples_seen) == (1, 0)


RESUME_SCRIPT = """
import json, sys
from shardgan.config import DataConfig
from shardgan import loader as loader_module
from shardgan.loader import ShardLoader
shards, state = sys.argv[1], json.loads(sys.argv[2])
loader = ShardLoader(DataConfig(shards=shards, batch_size=2, num_workers=1, pin_memory=False), rank=1, world_size=2)
loader.load_state_dict(state)
print(json.dumps([b["key"] for b in loader]))
"""


@pytest.mark.multiproc
def test_restore_in_a_new_process(dataset):
    uninterrupted = take(make_loader(dataset, rank=1, world_size=2), 11)
    before = make_loader(dataset, rank=1, world_size=2)
    take(before, 4)
    state = json.dumps(before.state_dict())
    done = subprocess.run([PYTHON, "-c", RESUME_SCRIPT, str(dataset), state], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == uninterrupted[4:]


@pytest.mark.parametrize("world_after,batch_after", [(3, 2), (1, 5), (4, 1)])
def test_elastic_restore_neither_repeats_nor_skips(dataset, world_after, batch_after):
    ranks = [make_loader(dataset, rank=r, world_size=2) for r in range(2)]
    consumed = [k for loader in ranks for batch in take(loader, 4) for k in batch]
    state = ranks[0].state_dict()
    assert state == {**ranks[1].state_dict(), "world_size": 2}
    rest = []
    for r in range(world_after):
        loader = make_loader(dataset, rank=r, world_size=world_after, batch_size=batch_after)
        loader.load_state_dict(state)
        rest.append([b["key"] for b in loader])
    assert len({len(batches) for batches in rest}) == 1
    keys = consumed + [k for batches in rest for batch in batches for k in batch]
    assert len(keys) == len(set(keys))
    assert sum(SIZES) - len(keys) < world_after * batch_after


@pytest.mark.parametrize("nodes,ranks_per_node,batch_size,num_workers", [(2, 2, 3, 0), (3, 1, 4, 0), (3, 2, 2, 2)])
def test_each_node_reads_only_its_share_of_the_shards(tmp_path, nodes, ranks_per_node, batch_size, num_workers):
    """torchrun numbers a node's ranks consecutively; with one canonical node per node, the nodes'
    shard sets overlap only where a piece boundary cuts a shard (at most nodes - 1 shards)."""
    sizes = [10] * 12
    build_dataset(tmp_path, sizes)
    world = nodes * ranks_per_node
    per_rank = all_ranks_epoch(tmp_path, world, nodes, batch_size=batch_size, num_workers=num_workers)
    check_epoch(per_rank, sum(sizes), world * batch_size, nodes)
    node_shards = [{int(k) // 10 for r in range(n * ranks_per_node, (n + 1) * ranks_per_node) for b in per_rank[r] for k in b} for n in range(nodes)]
    assert sum(len(s) for s in node_shards) <= len(sizes) + nodes - 1
    assert set().union(*node_shards) == set(range(len(sizes)))


def test_node_count_is_fixed_for_the_run_and_resumes_elastically(dataset):
    """A state taken on 2 nodes brings its 2 canonical nodes to a restore on 1 node (of 2 or 4
    ranks): nothing repeated or skipped. An older state (version 1) is read as 1 canonical node."""
    ranks = [make_loader(dataset, rank=r, world_size=2, nodes=2) for r in range(2)]
    consumed = [k for loader in ranks for batch in take(loader, 3) for k in batch]
    state = ranks[0].state_dict()
    assert state["canonical_nodes"] == 2 and state["version"] == 2
    rest = []
    for r in range(4):
        loader = make_loader(dataset, rank=r, world_size=4, batch_size=1)
        loader.load_state_dict(state)
        assert loader.canonical_nodes == 2
        rest.append([b["key"] for b in loader])
    keys = consumed + [k for batches in rest for batch in batches for k in batch]
    assert len(keys) == len(set(keys)) and sum(SIZES) - len(keys) < 4 + 2
    with pytest.raises(DataError, match="data.canonical_nodes changed: checkpoint has 2, config has 1"):
        make_loader(dataset, canonical_nodes=1).load_state_dict(state)
    with pytest.raises(DataError, match="global batch 3 .* not a multiple of the run's 2 canonical nodes"):
        make_loader(dataset, batch_size=3).load_state_dict(state)
    single = make_loader(dataset)
    take(single, 2)
    old = {k: v for k, v in single.state_dict().items() if k != "canonical_nodes"} | {"version": 1}
    fresh, restored = make_loader(dataset), make_loader(dataset)
    restored.load_state_dict(old)
    assert take(restored, 4) == take(fresh, 6)[2:]


def test_restore_refuses_a_state_that_cannot_continue(dataset, tmp_path):
    state = make_loader(dataset).state_dict()
    with pytest.raises(DataError, match="data.seed changed: checkpoint has 0, config has 7"):
        make_loader(dataset, seed=7).load_state_dict(state)
    build_dataset(tmp_path / "other", [7, 13, 5, 21])
    with pytest.raises(DataError, match="checkpoint has 45 samples, the shards now hold 46"):
        make_loader(tmp_path / "other").load_state_dict(state)
    build_dataset(tmp_path / "same_count", [13, 7, 5, 20])
    with pytest.raises(DataError, match="shard list or shard contents differ"):
        make_loader(tmp_path / "same_count").load_state_dict(state)
    with pytest.raises(DataError, match="no 'samples_seen' field"):
        make_loader(dataset).load_state_dict({k: v for k, v in state.items() if k != "samples_seen"})
    with pytest.raises(DataError, match="version 99"):
        make_loader(dataset).load_state_dict({**state, "version": 99})
    with pytest.raises(DataError, match="out of range"):
        make_loader(dataset).load_state_dict({**state, "samples_seen": 1000})


@pytest.mark.parametrize("num_workers", [0, 2])
def test_pipe_urls_give_the_same_batches_as_local_files(dataset, tmp_path, num_workers):
    local = all_ranks_epoch(dataset, 2, batch_size=3)
    pattern = f"pipe:cat {dataset}/train-{{000000..000003}}.tar"
    streamed = all_ranks_epoch(pattern, 2, batch_size=3, num_workers=num_workers, cache_dir=str(tmp_path))
    assert streamed == local


def test_pipe_restore_is_exact(dataset, tmp_path):
    pattern, cache = f"pipe:cat {dataset}/train-{{000000..000003}}.tar", str(tmp_path)
    uninterrupted = take(make_loader(pattern, cache_dir=cache), 22)
    before = make_loader(pattern, cache_dir=cache)
    take(before, 7)
    after = make_loader(pattern, cache_dir=cache, num_workers=2)
    after.load_state_dict(before.state_dict())
    assert take(after, 15) == uninterrupted[7:]


def test_brace_pattern_selects_a_subset_of_local_shards(dataset):
    loader = make_loader(f"{dataset}/train-{{000001..000002}}.tar", batch_size=3)
    keys = [k for b in loader for k in b["key"]]
    assert sorted(keys) == [f"{i:09d}" for i in range(7, 25)]  # shards 1 and 2 hold samples 7..24


def test_url_shards_find_their_manifest_beside_them(dataset, tmp_path):
    loader = make_loader(f"pipe:cat {dataset}/train-000001.tar", cache_dir=str(tmp_path))
    assert loader.source.num_samples == 13 and loader.manifest.origin == f"pipe:cat {dataset}/manifest.json"
    with pytest.raises(DataError, match="shard nope.tar is not in split 'train' of .*manifest.json"):
        make_loader("pipe:cat /x/nope.tar", manifest=str(dataset))
    with pytest.raises(DataError, match="mixes local paths and URLs"):
        make_loader(f"{dataset}/train-000000.tar::pipe:cat {dataset}/train-000001.tar")


def test_batch_larger_than_the_split_is_refused(dataset):
    with pytest.raises(DataError, match="global batch 48 .* is larger than split 'train' \\(45 samples\\)"):
        make_loader(dataset, batch_size=24, world_size=2)


EPOCH_SCRIPT = """
import json, resource, sys
from shardgan.config import DataConfig
from shardgan import loader as loader_module
from shardgan.loader import ShardLoader
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
loader = ShardLoader(DataConfig(shards=sys.argv[1], batch_size=50, num_workers=2, pin_memory=False))
print(json.dumps([k for batch in loader for k in batch["key"]]))
"""


@pytest.mark.multiproc
@pytest.mark.slow
def test_an_epoch_over_10000_shards_fits_in_256_open_files(tmp_path):
    write_tiny_shards(tmp_path, 10_000)
    done = subprocess.run([PYTHON, "-c", EPOCH_SCRIPT, str(tmp_path), "256"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    keys = json.loads(done.stdout)
    assert len(keys) == 10_000 and set(keys) == {sample_key(i) for i in range(10_000)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_batch_stays_valid_until_two_more_are_taken(dataset, num_workers):
    """Batches are views of a reused ring of buffers: the one in use and the one before it hold."""
    loader = make_loader(dataset, batch_size=3, num_workers=num_workers, prefetch_factor=1)
    previous = None
    for batch in loader:
        for held in (batch, previous):
            for image, key in zip(held["image"] if held else [], held["key"] if held else []):
                np.testing.assert_array_equal(image.numpy(), game_frame(int(key), 16, 12).transpose(2, 0, 1))
        previous = batch


def test_raw_batches_are_the_same_whatever_the_group_size_and_resume_point(tmp_path, monkeypatch):
    """Raw batches are read a group at a time; a batch's content depends only on its number."""
    build_dataset(tmp_path, SIZES, image_format="raw")
    grouped = make_loader(tmp_path, batch_size=3)
    assert grouped._group > 1
    whole = [(batch["key"], batch["image"].clone()) for batch in grouped]
    monkeypatch.setattr(loader_module, "GROUP_BYTES", 1)  # groups of one batch
    single = make_loader(tmp_path, batch_size=3)
    assert single._group == 1
    assert [(keys, image.tolist()) for keys, image in whole] == [(batch["key"], batch["image"].tolist()) for batch in single]
    monkeypatch.undo()
    resumed = make_loader(tmp_path, batch_size=3)
    resumed.load_state_dict({**resumed.state_dict(), "samples_seen": 5 * 3})  # inside the first group
    assert [(keys, image.tolist()) for keys, image in whole[5:]] == [(batch["key"], batch["image"].tolist()) for batch in resumed]


def test_gpu_decoding_is_refused_where_it_cannot_run(tmp_path):
    build_dataset(tmp_path, [8])
    with pytest.raises(DataError, match="data.decode_device=cuda decodes JPEG shards on the training GPU; here the shards are png and the device is cpu"):
        make_loader(tmp_path, decode_device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_copied_to_the_gpu_on_a_side_stream_arrive_whole_while_the_gpu_is_busy(dataset, num_workers):
    """The copy runs beside the training stream; the training stream waits for it, so a batch read
    on it right away, behind a long queued matmul, holds its samples."""
    loader = ShardLoader(DataConfig(shards=str(dataset), batch_size=3, num_workers=num_workers, prefetch_factor=1, pin_memory=True), device="cuda")
    busy = torch.randn(4096, 4096, device="cuda")
    for batch in loader:
        busy = busy @ busy / 4096  # keeps the training stream busy while the next copy runs
        assert batch["image"].is_cuda
        for image, key in zip(batch["image"].cpu(), batch["key"]):
            np.testing.assert_array_equal(image.numpy(), game_frame(int(key), 16, 12).transpose(2, 0, 1))
    assert loader._copy_stream is not None and loader._copy_stream != torch.cuda.current_stream()
