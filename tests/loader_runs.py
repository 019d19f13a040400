"""Loaders driven by the loader, remote and fault tests: one built from a few settings, the next
batches across epoch ends, an epoch of every simulated rank, and a real 2-process torchrun."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from shardgan.config import DataConfig
from shardgan.loader import ShardLoader
from tests.conftest import PYTHON, ROOT

SIZES = [7, 13, 5, 20]
"""Unequal shard sizes (45 samples) for the datasets these tests build."""


def make_loader(shards: str | Path, *, rank: int = 0, world_size: int = 1, nodes: int = 1, **cfg) -> ShardLoader:
    cfg = {"batch_size": 2, "num_workers": 0, "pin_memory": False, **cfg}
    return ShardLoader(DataConfig(shards=str(shards), **cfg), rank=rank, world_size=world_size, nodes=nodes)


def take(loader: ShardLoader, n: int) -> list[list[str]]:
    """The keys of the next n batches, across epoch ends, leaving the loader right after them."""
    out: list[list[str]] = []
    while len(out) < n:
        it = iter(loader)
        for batch in it:
            out.append(batch["key"])
            if len(out) == n:
                it.close()
                break
    return out


def all_ranks_epoch(shards: Path, world_size: int, nodes: int = 1, **cfg) -> list[list[list[str]]]:
    """One epoch of every rank (simulated in this process): [rank][batch] -> keys."""
    return [[b["key"] for b in make_loader(shards, rank=r, world_size=world_size, nodes=nodes, **cfg)] for r in range(world_size)]


RANK_SCRIPT = """
import json, sys
import torch, torch.distributed as dist
from shardgan.config import DataConfig
from shardgan.loader import ShardLoader

dist.init_process_group("gloo")
shards, out = sys.argv[1], sys.argv[2]
loader = ShardLoader(DataConfig(shards=shards, batch_size=3, num_workers=1, pin_memory=False), rank=dist.get_rank(), world_size=dist.get_world_size())
keys = []
for batch in loader:
    dist.all_reduce(torch.ones(1))  # a collective per step, as DDP does: a rank that ran out would hang here
    keys.append(batch["key"])
report = {"rank": loader.rank, "world_size": loader.world_size, "steps": len(keys), "keys": keys,
          "corrupt": [[r.shard, r.key] for r in loader.corrupt]}
with open(f"{out}/rank{dist.get_rank()}.json", "w") as f:
    json.dump(report, f)
dist.destroy_process_group()
"""


def run_torchrun(shards: Path, out: Path, nproc: int = 2) -> list[dict]:
    """Run RANK_SCRIPT under torchrun; return each rank's report (rank order)."""
    script = out / "rank_script.py"
    script.write_text(RANK_SCRIPT)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script), str(shards), str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
