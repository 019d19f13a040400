"""Many nodes as real torchrun agents (tests/nodes.py): each node fetches only its share, and
a lost node costs the job nothing (longer, seeded variants of the kill tests under `make soak`)."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
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



@dataclass(frozen=True)
class Kill:
    """Node `node` loses every process `delay_s` after its run reaches `after_step` (fixed size:
    the newest checkpoint's step; elastic: steps saved by the current 3-node attempt)."""

    node: int
    after_step: int
    delay_s: float


def fixed_kills(trial: int | None) -> tuple[int, tuple[Kill, ...]]:
    """(train.max_steps, kills): one kill at step 10 of the 40-step run (`make test`), or 2-3
    kills at seeded random moments of an 80-step run (`make soak`). Node 0 hosts the store."""
    if trial is None:
        return STEPS, (Kill(1, 10, 0.0),)
    rng = random.Random(trial)
    bins = sorted(rng.sample(range(6), rng.randint(2, 3)))  # kills >= 10 steps apart, the last before step 65
    return 80, tuple(Kill(1, 5 + 10 * b + rng.randrange(5), rng.uniform(0.0, 0.5)) for b in bins)


def elastic_kills(trial: int | None) -> tuple[int, tuple[Kill, ...]]:
    """(shards, kills): node 2 killed once (`make test`), or twice, node 1 or 2 at seeded random
    moments of a twice-as-long epoch, the lost node replaced in between (`make soak`)."""
    if trial is None:
        return SHARDS, (Kill(2, 4, 0.0),)
    rng = random.Random(trial)
    return 2 * SHARDS, tuple(Kill(rng.choice([1, 2]), rng.randint(2, 6), rng.uniform(0.0, 0.5)) for _ in range(2))


TRIALS = [None, *(pytest.param(t, marks=pytest.mark.soak, id=f"soak{t}") for t in range(3))]
"""None: the `make test` run; the soak trials repeat it longer, with more kills, seeded."""


def _train(shards: Path, run: Path, steps: int) -> list[str]:
    return ["-m", "shardgan.train", *train_args(shards, run, "data.num_workers=1", f"train.max_steps={steps}")]


@pytest.fixture(scope="module")
def uninterrupted(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted 2-node run of `steps` steps, run once per length."""
    runs: dict[int, Path] = {}

    def run(steps: int) -> Path:
        if steps not in runs:
            straight = tmp_path_factory.mktemp(f"straight{steps}") / "run"
            job = Nodes(2, 1, _train(tiny_shards, straight, steps), straight.parent)
            assert job.wait() == [0, 0], job.logs()
            runs[steps] = straight
        return runs[steps]

    return run


@pytest.mark.parametrize("trial", TRIALS)
def test_a_node_killed_mid_epoch_is_replaced_and_the_run_ends_bit_exact(tiny_shards: Path, uninterrupted, tmp_path: Path, trial: int | None) -> None:
    """2 nodes of 1 rank. Node 1's agent and rank are SIGKILLed together mid-epoch; a new agent
    takes its place with the same command (as a cluster's node replacement would), the survivor's
    agent restarts its rank (--max-restarts), and the run resumes from the newest checkpoint in the
    shared run root: its final state equals an uninterrupted 2-node run's, bit for bit."""
    steps, kills = fixed_kills(trial)
    print(f"trial {trial}: {steps} steps, kills {kills}")
    straight, run = uninterrupted(steps), tmp_path / "killed" / "run"
    job = Nodes(2, 1, _train(tiny_shards, run, steps), run.parent, max_restarts=2 * len(kills) + 1)
    killed_at = 0
    for kill in kills:
        wait_for(lambda: newest_step(run) >= max(kill.after_step, killed_at + 5), job.agents[0], timeout_s=180)
        time.sleep(kill.delay_s)
        job.kill(kill.node)
        killed_at = newest_step(run)
        assert killed_at < steps, f"the run ended before {kill}"
        job.replace(kill.node)
    assert job.wait() == [0, 0], job.logs()
    resumes = sum(p.read_text(errors="replace").count("resumed from") for p in run.parent.glob("node*.log"))
    assert resumes >= len(kills), job.logs()  # rank 0 logs it, on whichever node it lands
    assert_same_final(straight, run, steps)


def _saved_in_world(run: Path, world_size: int, steps: int) -> bool:
    """The newest attempt has `world_size` ranks and has saved `steps` steps past its start."""
    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()] if (run / "attempts.jsonl").exists() else []
    saved = json.loads((run / "position.json").read_text())["step"] if (run / "position.json").exists() else 0
    return bool(attempts) and attempts[-1]["world_size"] == world_size and saved >= attempts[-1]["start"] + steps


@pytest.mark.parametrize("trial", TRIALS)
def test_survivors_of_a_lost_node_continue_the_epoch_elastically(tmp_path: Path, trial: int | None) -> None:
    """--nnodes=2:3, data.canonical_nodes=6: a node is killed mid-epoch with every process on it,
    the two survivors re-rendezvous and continue the epoch from the last saved position, each on
    its own pieces (a replacement, where the trial has one, joins the next round): every sample
    at most once, and all but a remainder < one global batch + 6."""
    shards, kills = elastic_kills(trial)
    print(f"trial {trial}: {shards} shards, kills {kills}")
    dataset, run = tmp_path / "data", tmp_path / "run"
    build_dataset(dataset, [PER_SHARD] * shards)
    run.mkdir()
    script = tmp_path / "elastic.py"
    script.write_text(ELASTIC_SCRIPT)
    job = Nodes(3, 1, [str(script), str(dataset), str(run)], tmp_path, nnodes="2:3", max_restarts=3 * len(kills))
    for i, kill in enumerate(kills):
        if i:  # the node lost before is replaced once the survivors have moved on
            wait_for(lambda: _saved_in_world(run, 2, 2), job.agents[0], timeout_s=180)
            job.replace(kills[i - 1].node)
        wait_for(lambda: _saved_in_world(run, 3, kill.after_step), job.agents[0], timeout_s=180)
        time.sleep(kill.delay_s)
        job.kill(kill.node)
    codes = job.wait()
    assert [c for n, c in enumerate(codes) if n != kills[-1].node] == [0, 0], job.logs()
    worlds, keys = elastic_timeline(run)
    assert worlds[-1] == 2 and sum((a, b) == (3, 2) for a, b in zip(worlds, worlds[1:])) >= len(kills), worlds
    assert len(keys) == len(set(keys)), "a sample was trained twice"
    assert set(keys) <= {f"{i:09d}" for i in range(shards * PER_SHARD)}
    assert shards * PER_SHARD - len(keys) < 2 * 6 + 6, "samples were skipped"
