"""Nodes as real torchrun agents on 127.0.0.1, for the multi-node tests.

Each "node" is one `torchrun` agent in a process group of its own (a cluster signals or kills a
node's processes together), with node-local directories (TMPDIR, and so the default shard
cache), its own LOCAL_RANK space, and a c10d rendezvous shared with the others; the shards come
from the test's HTTP server and the run root, where there is one, is shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .conftest import PYTHON, ROOT, free_port
from .trainer_runs import process_tree

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


AGENT_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
"""What tools/slurm/train.sbatch exports for torchrun. With the rendezvous store shared (torch's
default), a surviving rank-0 agent does not publish the new round's MASTER_ADDR, and a
replacement node waits for it until the rendezvous times out."""


ELASTIC_SCRIPT = """
import json, sys, time
from pathlib import Path
import torch, torch.distributed as dist
from shardgan import distributed
from shardgan.atomic import write_bytes_atomic
from shardgan.config import DataConfig
from shardgan.loader import ShardLoader

# The trainer's resume protocol with the real loader, in a few lines: every rank records each
# step's keys, rank 0 saves the position every 2 steps, a new attempt starts from the newest one.
world = distributed.init("cpu")
shards, run = sys.argv[1], Path(sys.argv[2])
cfg = DataConfig(shards=shards, batch_size=6, num_workers=1, pin_memory=False, canonical_nodes=6)
loader = ShardLoader(cfg, rank=world.rank, world_size=world.world_size, nodes=world.nodes)
position, step = run / "position.json", 0
if position.exists():
    saved = json.loads(position.read_text())
    loader.load_state_dict(saved["loader"])
    step = saved["step"]
attempt = distributed.broadcast_from_main(time.time_ns())
if world.is_main:
    with open(run / "attempts.jsonl", "a") as f:
        f.write(json.dumps({"attempt": attempt, "start": step, "world_size": world.world_size}) + "\\n")
with open(run / f"keys-{attempt}-{world.rank}.jsonl", "a") as record:
    for batch in loader:
        step += 1
        record.write(json.dumps({"step": step, "keys": batch["key"]}) + "\\n")
        record.flush()
        dist.all_reduce(torch.ones(1))  # every rank's record of this step is written
        if world.is_main and step % 2 == 0:
            write_bytes_atomic(position, json.dumps({"step": step, "loader": loader.state_dict()}).encode())
        time.sleep(0.2)
distributed.shutdown()
"""


def elastic_timeline(run: Path) -> tuple[list[int], list[str]]:
    """What ELASTIC_SCRIPT's attempts trained, as one timeline: attempt i owns its steps up to
    where attempt i + 1 started. Returns the attempts' world sizes and the keys in step order."""
    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    keys = []
    for i, a in enumerate(attempts):
        end = attempts[i + 1]["start"] if i + 1 < len(attempts) else None
        for path in sorted(run.glob(f"keys-{a['attempt']}-*.jsonl")):
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if end is None or row["step"] <= end:
                    keys += row["keys"]
    return [a["world_size"] for a in attempts], keys


class Nodes:
    """`count` agents of one job (`nnodes`, default `count`), each `nproc` ranks of `command`
    (a script or `-m module` and its arguments); node i's local files under root/node{i}, its
    output in root/node{i}.log. Node 0 starts first and hosts the rendezvous store: as under
    torchrun on a cluster, a job survives the loss of any node but the store's host."""

    def __init__(self, count: int, nproc: int, command: list[str], root: Path, *, nnodes: str | None = None, max_restarts: int = 0):
        self.nproc, self.command, self.root = nproc, command, root
        self.nnodes, self.max_restarts = nnodes or str(count), max_restarts
        self.port = free_port()
        self.agents = [self._start(0)]
        self._wait_listening()
        self.agents += [self._start(i) for i in range(1, count)]

    def _start(self, index: int) -> subprocess.Popen:
        local = self.root / f"node{index}"
        (local / "tmp").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(local / "tmp"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **AGENT_ENV}
        cmd = [
            PYTHON, "-m", "torch.distributed.run", f"--nnodes={self.nnodes}", f"--nproc_per_node={self.nproc}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{self.port}", "--rdzv_id=shardgan-test", "--rdzv_conf=last_call_timeout=1",
            f"--max-restarts={self.max_restarts}", "--monitor-interval=0.5", *self.command,
        ]  # fmt: skip
        log = open(self.root / f"node{index}.log", "ab")
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_listening(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.agents[0].poll() is not None or time.monotonic() > deadline:
                raise AssertionError("node 0 did not open the rendezvous store:\n" + self.logs())
            time.sleep(0.1)

    def kill(self, index: int) -> None:
        """SIGKILL every process of node `index` (its agent's process tree: torchrun may start each
        rank in a session of its own), as a lost node loses them."""
        for pid in process_tree(self.agents[index].pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.agents[index].wait()

    def replace(self, index: int) -> None:
        """A new agent for node `index`, with the same command, as a cluster's replacement node."""
        self.agents[index] = self._start(index)

    def wait(self, timeout: float = 300) -> list[int]:
        """Every agent's exit code; on a timeout the agents are killed and their logs shown."""
        deadline = time.monotonic() + timeout
        codes = []
        for agent in self.agents:
            try:
                codes.append(agent.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                for index in range(len(self.agents)):
                    self.kill(index)
                raise AssertionError("nodes did not finish:\n" + self.logs()) from None
        return codes

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in sorted(self.root.glob("node*.log")))
