"""A real 2-process torchrun (gloo): equal step counts and disjoint data on every rank."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import PYTHON, ROOT, build_dataset

pytestmark = pytest.mark.multiproc  # every test here starts Python processes

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


@pytest.mark.slow
def test_torchrun_ranks_take_equal_steps_and_disjoint_samples(tmp_path):
    sizes = [11, 4, 17, 9]  # unequal shards, 41 samples, global batch 6
    build_dataset(tmp_path / "shards", sizes)
    reports = run_torchrun(tmp_path / "shards", tmp_path)
    assert [r["rank"] for r in reports] == [0, 1] and {r["world_size"] for r in reports} == {2}
    assert reports[0]["steps"] == reports[1]["steps"] == sum(sizes) // 6
    per_rank = [{k for batch in r["keys"] for k in batch} for r in reports]
    assert not per_rank[0] & per_rank[1]
    assert len(per_rank[0]) + len(per_rank[1]) == 6 * (sum(sizes) // 6)
