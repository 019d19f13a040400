"""Manifest cost at scale: version 1 (JSON offset lists, loaded as Python lists) against version 2
(one base64 offset array per split, loaded as numpy views), in one run.

Synthesises a 1M-sample, 10,000-shard manifest in both versions (no shard files: nothing here
reads samples) and, each in a fresh process, reports:

  load_s       time to load and validate the manifest (median of 3);
  held_mb      memory the loaded manifest holds (tracemalloc, after gc; numpy arrays included);
  peak_mb      the peak while loading;
  worker_*_mb  per DataLoader worker, after walking its share of an epoch's plan and looking up
               every planned sample's offsets (what the reader does before each pread):
               RSS, and private memory (USS: pages the worker copied or allocated itself);
  plan_s       time to compute an epoch's order and one worker's batches;
  egress_*     bytes all nodes fetch in an epoch over the dataset's, 2-8 nodes of 8 ranks on the
               GC7M collection's shards, with the epoch cut per node (data.canonical_nodes) and
               with one piece for all (before): from the plan, no downloads (tests/test_nodes.py
               measures it over http with real agents).

"before" is version 1 loaded as the loader did until now (`ShardInfo(**entry)`, lists of ints);
"after" is version 2 through `load_manifest`. The last line is one JSON object.

    .venv/bin/python tools/bench_scale.py [--samples 1000000] [--shards 10000] [--workers 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shardgan.manifest import MANIFEST_NAME, Manifest, ShardInfo, SplitInfo, load_manifest
from shardgan.plan import RankPlan, epoch_order

BATCH_SIZE = 128
SAMPLE_BYTES = 3 * 1024  # a 88x66 PNG sample, header and padding included


def synthesise(directory: Path, num_samples: int, num_shards: int) -> None:
    """manifest.json (version 2) and manifest_v1.json, for equal shards of SAMPLE_BYTES samples."""
    per_shard = num_samples // num_shards
    offsets = list(range(0, (per_shard + 1) * SAMPLE_BYTES, SAMPLE_BYTES))
    shards = [ShardInfo(f"train-{i:06d}.tar", per_shard, offsets[-1] + 1024, f"{i:064x}", offsets) for i in range(num_shards)]
    manifest = Manifest(88, 66, 3, "png", {"train": SplitInfo(shards)}, num_inputs=num_samples)
    manifest.write(directory)
    doc = manifest.to_json()
    split = doc["splits"]["train"]
    del split["offsets"]
    for entry in split["shards"]:
        entry["offsets"] = offsets
    (directory / "manifest_v1.json").write_text(json.dumps({**doc, "version": 1}, indent=1, sort_keys=True) + "\n")


def load_before(path: Path) -> list[ShardInfo]:
    """What the loader held until now: ShardInfo per entry, offsets as lists of Python ints."""
    doc = json.loads(path.read_text())
    return [ShardInfo(**s) for s in doc["splits"]["train"]["shards"]]


def load_after(path: Path) -> list[ShardInfo]:
    return load_manifest(path).split("train").shards


def memory_mb() -> dict[str, float]:
    """This process's RSS and private (USS) memory, from /proc/self/smaps_rollup."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) / 1024
    return {"rss": fields["Rss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


class PlanWalk(IterableDataset):
    """Each worker walks its batches of the epoch and looks up every sample's byte range."""

    def __init__(self, shards: list[ShardInfo], order: np.ndarray, workers: int):
        self.shards, self.order, self.workers = shards, order, workers

    def __iter__(self):
        info = get_worker_info()
        plan = RankPlan(0, 0, len(self.order), 1, 0, BATCH_SIZE)
        total = 0
        for b in range(info.id, plan.num_batches, info.num_workers):
            for shard, index in self.order[plan.batch_indices(b)].tolist():
                offsets = self.shards[shard].offsets
                total += int(offsets[index + 1]) - int(offsets[index])
        gc.collect()
        yield {"bytes": total, **memory_mb()}


def measure(variant: str, path: Path, workers: int) -> dict[str, float]:
    """One variant, in this (fresh) process."""
    load = load_before if variant == "before" else load_after
    tracemalloc.start()
    shards = load(path)
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        load(path)
        times.append(time.perf_counter() - start)
    gc.collect()
    start = time.perf_counter()
    order = epoch_order([s.num_samples for s in shards], seed=0, epoch=0)
    plan = RankPlan(0, 0, len(order), 1, 0, BATCH_SIZE)
    batches = [order[plan.batch_indices(b)] for b in range(0, plan.num_batches, workers)]
    plan_s = time.perf_counter() - start
    assert batches
    reports = list(DataLoader(PlanWalk(shards, order, workers), batch_size=None, num_workers=workers))
    return {
        "load_s": statistics.median(times),
        "held_mb": held / 2**20,
        "peak_mb": peak / 2**20,
        "worker_rss_mb": max(r["rss"] for r in reports),
        "worker_uss_mb": max(r["uss"] for r in reports),
        "plan_s": plan_s,
    }


def egress(shard_sizes: list[int], nodes: int, ranks_per_node: int, batch_size: int, canonical_nodes: int) -> float:
    """Bytes all nodes fetch in epoch 0 (each shard once per node that reads any of it: node-local
    caches) over the dataset's, from the plan alone; a shard's bytes are taken as its sample count."""
    order = epoch_order(shard_sizes, seed=0, epoch=0)
    world = nodes * ranks_per_node
    fetched = 0
    for node in range(nodes):
        touched: set[int] = set()
        for rank in range(node * ranks_per_node, (node + 1) * ranks_per_node):
            plan = RankPlan(0, 0, len(order), world, rank, batch_size, canonical_nodes)
            steps = plan.batch_indices(0) + plan.per_piece * np.arange(plan.num_batches)[:, None]
            touched.update(np.unique(order[steps.ravel(), 0]).tolist())
        fetched += sum(shard_sizes[s] for s in touched)
    return fetched / sum(shard_sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--measure", nargs=2, metavar=("VARIANT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]), args.workers)))
        return
    r: dict[str, object] = {"samples": args.samples, "shards": args.shards, "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        directory = Path(tmp)
        synthesise(directory, args.samples, args.shards)
        sizes = {"before": directory / "manifest_v1.json", "after": directory / MANIFEST_NAME}
        for variant, path in sizes.items():
            r[f"{variant}_json_mb"] = path.stat().st_size / 2**20
            cmd = [sys.executable, __file__, "--workers", str(args.workers), "--measure", variant, str(path)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            for key, value in json.loads(done.stdout.splitlines()[-1]).items():
                r[f"{variant}_{key}"] = value
            print(
                f"{variant:>6} (manifest v{1 if variant == 'before' else 2}, {r[f'{variant}_json_mb']:.1f} MB): "
                f"load {r[f'{variant}_load_s']:.3f} s, holds {r[f'{variant}_held_mb']:.1f} MB (peak {r[f'{variant}_peak_mb']:.0f} MB); per worker after an epoch's plan: "
                f"RSS {r[f'{variant}_worker_rss_mb']:.0f} MB, private {r[f'{variant}_worker_uss_mb']:.1f} MB; "
                f"plan {r[f'{variant}_plan_s']:.3f} s/epoch",
                flush=True,
            )
    # The GC7M collection packed raw at 256 MB shards: 1M samples, 13,150 a shard; 8 ranks per node.
    gc7m = [13_150] * (1_000_000 // 13_150) + [1_000_000 % 13_150]
    for nodes in (2, 4, 8):
        for canonical, name in ((1, "one_piece"), (nodes, "per_node")):
            r[f"egress_{name}_{nodes}_nodes"] = egress(gc7m, nodes, 8, 128, canonical)
        print(f"{nodes} nodes x 8 ranks, batch 128, {len(gc7m)} shards: all nodes fetch {r[f'egress_per_node_{nodes}_nodes']:.3f}x the dataset an epoch "
              f"with one canonical node each ({r[f'egress_one_piece_{nodes}_nodes']:.2f}x with one piece for all)", flush=True)
    r["load_speedup"] = r["before_load_s"] / r["after_load_s"]
    r["worker_private_saved_mb"] = r["before_worker_uss_mb"] - r["after_worker_uss_mb"]
    print(f"load {r['load_speedup']:.1f}x faster; {r['worker_private_saved_mb']:.0f} MB less private memory per worker "
          f"(targets: after load < 0.2 s, < 10 MB per process)")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}, sort_keys=True))


if __name__ == "__main__":
    main()
