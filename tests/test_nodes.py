"""Many nodes as real torchrun agents (tests/nodes.py): each node fetches only its share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import build_dataset
from .http_server import serve
from .nodes import ELASTIC_SCRIPT, EPOCH_SCRIPT, Nodes, elastic_timeline
from .trainer_runs import STEPS, assert_same_final, newest_step, train_args, wait_for

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
        job = Nodes(nodes, nproc, [str(script), shards, str(tmp_path), "4"], tmp_path)
        assert job.wait() == [0] * nodes, job.logs()
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



def _train(shards: Path, run: Path) -> list[str]:
    return ["-m", "shardgan.train", *train_args(shards, run, "data.num_workers=1")]


def test_a_node_killed_mid_epoch_is_replaced_and_the_run_ends_bit_exact(tiny_shards: Path, tmp_path: Path) -> None:
    """2 nodes of 1 rank. Node 1's agent and rank are SIGKILLed together mid-epoch; a new agent
    takes its place with the same command (as a cluster's node replacement would), the survivor's
    agent restarts its rank (--max-restarts), and the run resumes from the newest checkpoint in the
    shared run root: its final state equals an uninterrupted 2-node run's, bit for bit."""
    straight, run = tmp_path / "straight" / "run", tmp_path / "killed" / "run"
    uninterrupted = Nodes(2, 1, _train(tiny_shards, straight), straight.parent)
    assert uninterrupted.wait() == [0, 0], uninterrupted.logs()
    job = Nodes(2, 1, _train(tiny_shards, run), run.parent, max_restarts=2)
    wait_for(lambda: newest_step(run) >= 10, job.agents[0], timeout_s=180)
    job.kill(1)
    assert newest_step(run) < STEPS
    job.replace(1)
    assert job.wait() == [0, 0], job.logs()
    assert "resum" in job.logs()
    assert_same_final(straight, run)


def test_survivors_of_a_lost_node_continue_the_epoch_elastically(dataset: Path, tmp_path: Path) -> None:
    """--nnodes=2:3, data.canonical_nodes=6: node 2 is killed mid-epoch with every process on it,
    the two survivors re-rendezvous and finish the epoch from the last saved position, each on
    its own pieces: every sample at most once, and all but a remainder < one global batch + 6."""
    run = tmp_path / "run"
    run.mkdir()
    script = tmp_path / "elastic.py"
    script.write_text(ELASTIC_SCRIPT)
    job = Nodes(3, 1, [str(script), str(dataset), str(run)], tmp_path, nnodes="2:3", max_restarts=3)

    def three_nodes_saved() -> bool:
        worlds = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()] if (run / "attempts.jsonl").exists() else []
        saved = json.loads((run / "position.json").read_text())["step"] if (run / "position.json").exists() else 0
        return bool(worlds) and worlds[-1]["world_size"] == 3 and saved >= worlds[-1]["start"] + 4

    wait_for(three_nodes_saved, job.agents[0], timeout_s=180)
    job.kill(2)
    codes = job.wait()
    assert codes[:2] == [0, 0], job.logs()
    worlds, keys = elastic_timeline(run)
    assert worlds[-2:] == [3, 2], worlds
    assert len(keys) == len(set(keys)), "a sample was trained twice"
    assert set(keys) <= {f"{i:09d}" for i in range(SHARDS * PER_SHARD)}
    assert SHARDS * PER_SHARD - len(keys) < 2 * 6 + 6, "samples were skipped"
