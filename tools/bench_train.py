"""Benchmark the trainer: real loader vs synthetic batches, and what checkpoints cost.

In one run, on the same model, config and train step (augmentation included):
  (a) steps/s fed by shardgan's ShardLoader from real shards (written here, pack's format);
  (b) steps/s on synthetic uint8 batches already in memory (the upper bound for the loader);
  -> loader overhead = (b - a) / b   (target <= 5 %)
  (c) one full checkpoint write (rank 0: G, D, EMA, optimizers, RNG, loader) in seconds;
  -> checkpoint share = (c) / (training time between checkpoints at the default interval:
     checkpoint.every_steps steps, or checkpoint.every_minutes if that comes first) (target < 1 %)
  (d) images/s of the real loop (`shardgan.train.train`: loader, step, agreement, logging and
      every hook at their defaults) on a split of 8 batches, so it crosses an epoch end every 8
      steps, read from its metrics.jsonl;
  -> loop overhead = (b - d) / b: what the hooks and epoch ends cost on top of the bare step

CPU (default): configs/gc7m.toml (88x66) narrowed to ngf = ndf = 16 so a step takes what a
small model takes on 2 cores, batch 32 from PNG shards, one loader worker.
GPU (--device cuda): configs/gc7m.toml (88x66, the original project's GC7M nets) with bf16 autocast,
channels_last and torch.compile, from raw shards; images/s (target >= 20,000 on one H100).
The last line is one JSON object with the figures.

    .venv/bin/python tools/bench_train.py [--quick]
    python tools/bench_train.py --device cuda --batch-size 512 --workers 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from shardgan import distributed as D
from shardgan import state as T
from shardgan.loader import ShardLoader
from shardgan.resume import save_checkpoint
from shardgan.rundir import read_metrics
from shardgan.train import train, train_step
from shardgan.config import CheckpointConfig
from shardgan.configfile import load_config
from shardgan.manifest import Manifest, SplitInfo
from shardgan.rundir import RunDir
from shardgan.shards import Sample, encode_image, sample_key, write_shard


def write_dataset(directory: Path, num_samples: int, shard_size: int, width: int, height: int, image_format: str, unique_shards: int = 8) -> None:
    """Shards + manifest in pack's format: `unique_shards` written (256 distinct noisy frames under
    distinct keys), the rest hard links to them, so a long epoch costs little disk or time."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    frames = [encode_image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), image_format) for _ in range(256)]
    infos: list = []
    for shard, start in enumerate(range(0, num_samples - shard_size + 1, shard_size)):
        path = directory / f"train-{shard:06d}.tar"
        if shard < unique_shards:
            samples = (Sample(sample_key(i), frames[i % len(frames)], {"src": f"bench_{i}"}) for i in range(start, start + shard_size))
            infos.append(write_shard(path, samples, image_format))
        else:
            source = infos[shard % unique_shards]
            os.link(directory / source.name, path)
            infos.append(dataclasses.replace(source, name=path.name))
    Manifest(width, height, 3, image_format, {"train": SplitInfo(infos)}, num_inputs=len(infos) * shard_size, root=directory).write(directory)


def real_batches(loader: ShardLoader) -> Iterator[torch.Tensor]:
    while True:
        for batch in loader:
            yield batch["image"]


def synthetic_batches(loader: ShardLoader, count: int) -> Iterator[torch.Tensor]:
    """`count` real batches held in memory (pinned on CUDA, like the loader's), cycled."""
    held = [b for _, b in zip(range(count), real_batches(loader))]
    held = [b.pin_memory() if torch.cuda.is_available() else b for b in held]
    while True:
        yield from held


def steps_per_s(t: T.TrainState, batches: Iterator[torch.Tensor], warmup: int, steps: int) -> float:
    sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        train_step(t, next(batches))
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(t, next(batches))
        t.step += 1
    sync()
    return steps / (time.perf_counter() - start)


def checkpoint_s(t: T.TrainState, loader: ShardLoader, directory: Path, repeats: int) -> float:
    rd = RunDir(directory / "bench")
    rd.create()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        save_checkpoint(t, loader, rd)
        times.append(time.perf_counter() - start)
        t.step += 1
    return statistics.median(times)


def loop_images_per_s(preset: Path, overrides: list[str], work: Path, batch: int, image_format: str, steps: int) -> float:
    """Images/s of the real training loop on a split of 8 batches (an epoch end every 8 steps):
    the median of its log lines after the first two (warm-up, compilation)."""
    base = load_config(preset, overrides)
    small = work / "small_shards"
    write_dataset(small, batch * 8, batch * 2, base.model.width, base.model.height, image_format, 4)
    extra = [f"data.shards={small}", f"run.root={work / 'runs'}", "run.name=loop", f"train.max_steps={steps}", "train.log_every_steps=10"]
    rd, _ = train(load_config(preset, [*overrides, *extra]))
    rates = [r["images_per_s"] for r in read_metrics(rd.metrics) if "images_per_s" in r][2:]
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quick", action="store_true", help="fewer steps")
    p.add_argument("--batch-size", type=int, default=0, help="per-step batch (default: 32 on CPU, 256 on CUDA)")
    p.add_argument("--workers", type=int, default=-1, help="loader workers (default: 1 on CPU, 8 on CUDA; 0: load in the training process)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per side (default: 60 CPU / 200 CUDA)")
    p.add_argument("--no-compile", action="store_true", help="CUDA: skip torch.compile")
    p.add_argument("--shards", type=Path, help="use these shards (of the preset's size) instead of writing new ones")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    batch = args.batch_size or (256 if cuda else 32)
    workers = args.workers if args.workers >= 0 else (8 if cuda else 1)
    steps = args.steps or (200 if cuda else 40) // (2 if args.quick else 1)
    warmup = 30 if cuda else 5
    preset = "gc7m"
    narrow = [] if cuda else ["model.ngf=16", "model.ndf=16"]
    image_format = "raw" if cuda else "png"

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        base = load_config(ROOT / "configs" / f"{preset}.toml")
        shards = args.shards or Path(tmp) / "shards"
        if args.shards is None:
            num_samples = 262144 if cuda else batch * 80
            start = time.perf_counter()
            write_dataset(shards, num_samples, 2048 if cuda else 256, base.model.width, base.model.height, image_format, 8 if cuda else 10)
            print(f"wrote {num_samples} {image_format} samples at {base.model.width}x{base.model.height} in {time.perf_counter() - start:.1f} s", flush=True)
        overrides = [
            f"data.shards={shards}", f"data.batch_size={batch}", f"data.num_workers={workers}",
            f"train.device={args.device}", f"train.compile={str(cuda and not args.no_compile).lower()}", "train.epochs=1000", *narrow,
        ]  # fmt: skip
        cfg = load_config(ROOT / "configs" / f"{preset}.toml", overrides)
        dist = D.init(cfg.train.device)
        t = T.build_state(cfg, dist)
        loader = T.open_loader(cfg, dist)
        synthetic = steps_per_s(t, synthetic_batches(loader, 16), warmup, steps)
        real = steps_per_s(t, real_batches(loader), warmup, steps)
        synthetic_again = steps_per_s(t, synthetic_batches(loader, 16), 2, steps)  # drift check
        synthetic = max(synthetic, synthetic_again)
        ckpt_s = checkpoint_s(t, loader, Path(tmp) / "runs", 3 if args.quick else 5)
        loop = loop_images_per_s(ROOT / "configs" / f"{preset}.toml", overrides[1:], Path(tmp), batch, image_format, max(steps, 60))

    defaults = CheckpointConfig()
    interval_s = min(defaults.every_steps / real if defaults.every_steps else float("inf"), 60 * defaults.every_minutes)
    figures = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "preset": preset + ("" if cuda else " ngf=ndf=16"),
        "batch_size": batch,
        "loader_workers": workers,
        "image_format": image_format,
        "steps_per_s_real_loader": round(real, 3),
        "steps_per_s_synthetic": round(synthetic, 3),
        "images_per_s_real_loader": round(real * batch, 1),
        "images_per_s_synthetic": round(synthetic * batch, 1),
        "loader_overhead_pct": round(100 * max(0.0, synthetic - real) / synthetic, 2),
        "checkpoint_s": round(ckpt_s, 4),
        "checkpoint_interval_s": round(interval_s, 1),
        "checkpoint_share_pct": round(100 * ckpt_s / interval_s, 4),
        "images_per_s_real_loop": round(loop, 1),
        "loop_overhead_pct": round(100 * max(0.0, synthetic * batch - loop) / (synthetic * batch), 2),
    }
    print(f"real loader : {real:8.2f} steps/s  {real * batch:10.1f} img/s")
    print(f"synthetic   : {synthetic:8.2f} steps/s  {synthetic * batch:10.1f} img/s")
    print(f"loader overhead: {figures['loader_overhead_pct']:.2f} % (target <= 5 %)")
    print(f"checkpoint: {ckpt_s:.3f} s every {interval_s:.0f} s -> {figures['checkpoint_share_pct']:.4f} % of training time (target < 1 %)")
    print(f"real loop   : {loop:10.1f} img/s with its hooks, an epoch end every 8 steps -> {figures['loop_overhead_pct']:.2f} % over the bare step")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
