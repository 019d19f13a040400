"""The parts of tools/gpu_check.sh, one per subcommand; each prints its figures as one JSON line.

    python tools/gpu_check.py PART --work DIR [--cpu-dry-run]

PART: syncs, speed, loop, exact, swd (the shell script runs versions, pytest and the loader
and pack benchmarks itself). On a GPU the sizes are the real ones (GC7M and 3CK2 at batch 256
and 512); with --cpu-dry-run every part runs the same code on the CPU with tiny sizes, so the
check cannot rot before a GPU is lent (tests/test_gpu_check.py runs it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_train import write_dataset  # noqa: E402
from tqdm import tqdm  # noqa: E402

from shardgan import checkpoint as ckpt  # noqa: E402
from shardgan import distributed as dist  # noqa: E402
from shardgan.configfile import load_config  # noqa: E402
from shardgan.hooks import Hooks, prepare_run_dir  # noqa: E402
from shardgan.fidelity import SlicedWasserstein  # noqa: E402
from shardgan.rundir import RunDir, read_metrics  # noqa: E402
from shardgan.stop import StopFlag  # noqa: E402
from shardgan.train import train, train_step  # noqa: E402
from shardgan.state import build_state, open_loader  # noqa: E402


def sizes(dry: bool) -> dict[str, Any]:
    """What each part runs: real on the GPU, tiny on the CPU (the same code paths)."""
    if dry:
        return {"presets": ["tiny"], "batches": [8], "steps": 24, "device": "cpu", "swd_images": [16, 32], "precision": "fp32",
                "narrow": [], "compile": [False], "exact_steps": (30, 5), "exact_preset": "tiny", "exact_batch": 4}  # fmt: skip
    return {"presets": ["gc7m", "3ck2"], "batches": [256, 512], "steps": 300, "device": "cuda", "swd_images": [512, 2048], "precision": "bf16",
            "narrow": [], "compile": [False, True], "exact_steps": (200, 20), "exact_preset": "gc7m", "exact_batch": 64}  # fmt: skip


def shards_for(work: Path, preset: str, batch: int) -> Path:
    """Raw shards of the preset's size: 64 batches (written once per size)."""
    cfg = load_config(ROOT / "configs" / f"{preset}.toml")
    directory = work / f"shards_{cfg.model.width}x{cfg.model.height}_{batch}"
    if not (directory / "manifest.json").exists():
        write_dataset(directory, batch * 64, batch * 8, cfg.model.width, cfg.model.height, "raw", 8)
    return directory


def quiet_overrides(shards: Path, work: Path, name: str, device: str) -> list[str]:
    return [f"data.shards={shards}", f"run.root={work / 'runs'}", f"run.name={name}", f"train.device={device}", "checkpoint.resume=never",
            "train.sample_every_steps=0", "checkpoint.every_minutes=0", "train.collapse_logs=0", "data.num_workers=0"]  # fmt: skip


def median_rate(rd: RunDir) -> float:
    rates = [r["images_per_s"] for r in read_metrics(rd.metrics) if "images_per_s" in r]
    return round(statistics.median(rates[2:] or rates), 1)


def part_syncs(work: Path, s: dict[str, Any]) -> dict[str, Any]:
    """10 ordinary steps of the real step and hooks: CUDA sync warnings (expect 0), then a profile."""
    preset, batch = s["presets"][0], s["batches"][0]
    cfg = load_config(ROOT / "configs" / f"{preset}.toml", [*quiet_overrides(shards_for(work, preset, batch), work, "syncs", s["device"]),
                      f"data.batch_size={batch}", "train.log_every_steps=100000", "checkpoint.every_steps=0"])  # fmt: skip
    world = dist.init(cfg.train.device)
    t, loader = build_state(cfg, world), open_loader(cfg, world)
    rd = RunDir(Path(cfg.run.root) / cfg.run.name)
    prepare_run_dir(t, rd)
    hooks = Hooks(t, loader, rd, StopFlag(), tqdm(disable=True))
    cuda = t.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def steps(n: int) -> None:
        for _ in range(n):
            batch_ = next(batches)
            stats = train_step(t, batch_["image"])
            t.step += 1
            hooks.after_step(stats, loader.epoch)

    def forever():
        while True:
            yield from loader

    batches = forever()
    steps(5)
    sync()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        steps(10)
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
    sync_warnings = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        steps(10)
        sync()
    wall_us = (time.perf_counter() - start) * 1e6
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    hooks.close()
    loader.close()
    return {
        "sync_warnings": len(sync_warnings) if cuda else "n/a on cpu", "first_sync_warnings": sync_warnings[:3],
        "kernels_per_step": len(kernels) / 10 if cuda else "n/a on cpu",
        "cpu_ops_per_step": sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU) / 10,
        "gpu_busy_pct": round(100 * sum(e.time_range.elapsed_us() for e in kernels) / wall_us, 1) if cuda else "n/a on cpu",
    }  # fmt: skip


def part_speed(work: Path, s: dict[str, Any]) -> dict[str, Any]:
    """img/s of the real loop and hooks per preset and batch: eager against compile, channels_last
    on and off, bf16; recompiles counted from torch's own log."""
    recompiles: list[str] = []

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "ecompil" in record.getMessage():
                recompiles.append(record.getMessage().splitlines()[0])

    torch._logging.set_logs(recompiles=True)
    logging.getLogger("torch._dynamo").addHandler(Count())
    out: dict[str, Any] = {}
    for preset in s["presets"]:
        for batch in s["batches"]:
            first = batch == s["batches"][0]  # compile and NCHW at the first batch size only: compiling costs most of a minute
            variants = [(c, True) for c in s["compile"] if first or not c] + ([(False, False)] if first else [])
            for compiled, channels_last in variants:
                name = f"{preset}_b{batch}_{'compile' if compiled else 'eager'}_{'cl' if channels_last else 'nchw'}"
                cfg = load_config(ROOT / "configs" / f"{preset}.toml", [*quiet_overrides(shards_for(work, preset, batch), work, name, s["device"]),
                                  f"data.batch_size={batch}", f"train.max_steps={s['steps']}", "train.log_every_steps=20", "checkpoint.every_steps=0",
                                  f"train.compile={str(compiled).lower()}", f"train.channels_last={str(channels_last).lower()}", f"train.precision={s['precision']}"])  # fmt: skip
                before = len(recompiles)
                rd, _ = train(cfg)
                out[name] = {"images_per_s": median_rate(rd), "recompiles": len(recompiles) - before}
    out["recompile_lines"] = recompiles[:5]
    return out


def part_loop(work: Path, s: dict[str, Any]) -> dict[str, Any]:
    """The real loop over a split of 8 batches: an epoch end every 8 steps, img/s from metrics.jsonl."""
    preset, batch = s["presets"][0], s["batches"][0]
    small = work / "small_shards"
    cfg = load_config(ROOT / "configs" / f"{preset}.toml")
    write_dataset(small, batch * 8, batch * 2, cfg.model.width, cfg.model.height, "raw", 4)
    cfg = load_config(ROOT / "configs" / f"{preset}.toml", [*quiet_overrides(small, work, "loop", s["device"]), f"data.batch_size={batch}",
                      f"train.max_steps={s['steps']}", "train.log_every_steps=10", f"train.precision={s['precision']}"])  # fmt: skip
    rd, _ = train(cfg)
    return {"images_per_s_across_epoch_ends": median_rate(rd), "epoch_ends": s["steps"] // 8}


def torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "shardgan.train", *args]


def same_bits(a: Path, b: Path) -> bool:
    sa, sb = ckpt.load_newest(a / "checkpoints")[0], ckpt.load_newest(b / "checkpoints")[0]

    def equal(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(equal(i, j) for i, j in zip(x, y))
        return x == y

    return sa[ckpt.STEP] == sb[ckpt.STEP] and all(equal(sa[k], sb[k]) for k in (ckpt.G, ckpt.D, ckpt.EMA, ckpt.OPT_G, ckpt.OPT_D))


def part_exact(work: Path, s: dict[str, Any]) -> dict[str, Any]:
    """Two ranks on one device over gloo: a straight run against one stopped by SIGTERM (to the
    whole process group) at a checkpoint and resumed, bit for bit, in deterministic and default mode."""
    preset, batch = s["exact_preset"], s["exact_batch"]
    total, at = s["exact_steps"]
    shards = shards_for(work, preset, batch)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out: dict[str, Any] = {}
    for mode in ("deterministic", "default"):
        common = ["--config", str(ROOT / "configs" / f"{preset}.toml"), f"data.shards={shards}", f"run.root={work / 'runs'}", f"data.batch_size={batch}",
                  f"train.device={s['device']}", "train.backend=gloo", f"train.deterministic={str(mode == 'deterministic').lower()}",
                  f"train.max_steps={total}", f"checkpoint.every_steps={at}", "train.sample_every_steps=0", "data.num_workers=0", "train.log_every_steps=5"]  # fmt: skip
        straight, resumed = work / "runs" / f"straight_{mode}", work / "runs" / f"resumed_{mode}"
        start = time.perf_counter()
        done = subprocess.run(torchrun([*common, f"run.name={straight.name}"]), env=env, capture_output=True, text=True, timeout=300)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"straight {mode} run failed: {done.stderr[-2000:]}")
        proc = subprocess.Popen(torchrun([*common, f"run.name={resumed.name}", f"train.max_steps={total * 100}"]), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 240
        while not (resumed / "checkpoints" / f"step_{at:08d}.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{mode}: no checkpoint at step {at} (rc {proc.poll()})")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        stopped_rc = proc.wait(timeout=120)
        done = subprocess.run(torchrun([*common, f"run.name={resumed.name}"]), env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"resumed {mode} run failed: {done.stderr[-2000:]}")
        out[mode] = {"bit_identical": same_bits(straight, resumed), "stop_exit_code": stopped_rc, "straight_run_s": round(seconds, 1),
                     "images_per_s": median_rate(RunDir(straight))}  # fmt: skip
    out["deterministic_cost_pct"] = round(100 * (1 - out["deterministic"]["images_per_s"] / max(out["default"]["images_per_s"], 1e-9)), 1)
    return out


def part_swd(work: Path, s: dict[str, Any]) -> dict[str, Any]:
    """SWD's cost on the training device: the reference, then one evaluation, per image count."""
    device = torch.device(s["device"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cfg = load_config(ROOT / "configs" / f"{s['presets'][0]}.toml")
    out: dict[str, Any] = {}
    for n in s["swd_images"]:
        images = torch.randint(0, 256, (n, 3, cfg.model.height, cfg.model.width), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
        start = time.perf_counter()
        swd = SlicedWasserstein.with_mode(images, "paper", device=device)
        sync()
        built = time.perf_counter() - start
        start = time.perf_counter()
        swd(images.flip(0))
        sync()
        evaluated = time.perf_counter() - start
        out[f"n{n}"] = {"reference_s": round(built, 3), "evaluation_s": round(evaluated, 3), "ms_per_image": round(1000 * evaluated / n, 3)}
    return out


PARTS = {"syncs": part_syncs, "speed": part_speed, "loop": part_loop, "exact": part_exact, "swd": part_swd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--work", type=Path, required=True, help="scratch directory (shards, runs)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    figures = PARTS[args.part](args.work, sizes(args.cpu_dry_run))
    print(json.dumps({args.part: figures}))


if __name__ == "__main__":
    main()
