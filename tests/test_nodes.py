"""Many nodes as real torchrun agents (tests/nodes.py): each node fetches only its share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import build_dataset
from .http_server import serve
from .nodes import EPOCH_SCRIPT, logs, start_nodes, wait_nodes

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

SHARDS = 48
PER_SHARD = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("nodes_data")
    build_dataset(directory, [PER_SHARD] * SHARDS)
    return directory


@pytest.mark.parametrize("nodes,nproc", [(2, 1), (3, 1)])
def test_each_node_fetches_only_its_share_of_an_epoch(dataset: Path, tmp_path: Path, nodes: int, nproc: int) -> None:
    """Over http, with node-local caches: all nodes together fetch <= 1.05x the train shards'
    bytes in one epoch (1.98x on 2 nodes when every rank took a slice of every batch), and the
    epoch still gives every sample once, in equal steps."""
    script = tmp_path / "epoch.py"
    script.write_text(EPOCH_SCRIPT)
    url = "http://{host}/train-{{000000..{last:06d}}}.tar"
    with serve(dataset) as server:
        shards = url.format(host=server.url.removeprefix("http://"), last=SHARDS - 1)
        agents = start_nodes(nodes, nproc, [str(script), shards, str(tmp_path), "4"], tmp_path)
        assert wait_nodes(agents, tmp_path) == [0] * nodes, logs(tmp_path)
        fetched = sum(n for name, n in server.sent.items() if name.endswith(".tar"))
    world = nodes * nproc
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert {r["nodes"] for r in reports} == {nodes}
    assert len({len(r["keys"]) for r in reports}) == 1
    keys = [k for r in reports for batch in r["keys"] for k in batch]
    assert len(keys) == len(set(keys)) and SHARDS * PER_SHARD - len(keys) < 4 * world + nodes
    assert len({r["tmpdir"] for r in reports}) == nodes  # node-local caches, one per agent
    dataset_bytes = sum((dataset / f"train-{i:06d}.tar").stat().st_size for i in range(SHARDS))
    assert fetched <= 1.05 * dataset_bytes, f"fetched {fetched / dataset_bytes:.2f}x the dataset"

