"""Nodes as real torchrun agents on 127.0.0.1, for the multi-node tests.

Each "node" is one `torchrun` agent in a process group of its own (a cluster signals or kills a
node's processes together), with node-local directories (TMPDIR, and so the default shard
cache), its own LOCAL_RANK space, and a c10d rendezvous shared with the others; the shards come
from the test's HTTP server and the run root, where there is one, is shared.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .conftest import PYTHON, ROOT

EPOCH_SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
from shardgan import distributed
from shardgan.config import DataConfig
from shardgan.loader import ShardLoader

world = distributed.init("cpu")
shards, out = sys.argv[1], sys.argv[2]
cfg = DataConfig(shards=shards, batch_size=int(sys.argv[3]), num_workers=1, pin_memory=False, prefetch_shards=1)
loader = ShardLoader(cfg, rank=world.rank, world_size=world.world_size, nodes=world.nodes)
keys = []
for batch in loader:
    dist.all_reduce(torch.ones(1))  # a collective per step, as DDP does: a rank that ran out would hang here
    keys.append(batch["key"])
report = {"rank": world.rank, "local_rank": world.local_rank, "nodes": world.nodes, "keys": keys, "tmpdir": os.environ["TMPDIR"]}
with open(f"{out}/rank{world.rank}.json", "w") as f:
    json.dump(report, f)
distributed.shutdown()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(count: int, nproc: int, command: list[str], root: Path, *, nnodes: str | None = None, max_restarts: int = 0, port: int | None = None) -> list[subprocess.Popen]:
    """`count` agents of one job (`nnodes`, default `count`), each `nproc` ranks of `command`
    (a script or `-m module` and its arguments), node i's local files under root/node{i}; logs
    in root/node{i}.log."""
    port = port or free_port()
    return [start_node(i, nproc, command, root, nnodes=nnodes or str(count), max_restarts=max_restarts, port=port) for i in range(count)]


def start_node(index: int, nproc: int, command: list[str], root: Path, *, nnodes: str, max_restarts: int, port: int) -> subprocess.Popen:
    local = root / f"node{index}"
    (local / "tmp").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(local / "tmp"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        PYTHON, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=shardgan-test", f"--max-restarts={max_restarts}", "--monitor-interval=0.5",
        *command,
    ]  # fmt: skip
    log = open(root / f"node{index}.log", "ab")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_nodes(agents: list[subprocess.Popen], root: Path, timeout: float = 240) -> list[int]:
    """Every agent's exit code; on a timeout the agents are killed and their logs shown."""
    deadline = time.monotonic() + timeout
    codes = []
    for agent in agents:
        try:
            codes.append(agent.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for a in agents:
                kill_node(a)
            raise AssertionError("nodes did not finish:\n" + logs(root)) from None
    return codes


def kill_node(agent: subprocess.Popen) -> None:
    """SIGKILL a node's agent and ranks at once (its whole process group), as a lost node is."""
    try:
        os.killpg(agent.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    agent.wait()


def logs(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in sorted(root.glob("node*.log")))
