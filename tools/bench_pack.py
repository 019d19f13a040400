"""Benchmark `shardgan pack` against the one-core bound and (if installed) litdata's optimize().

Generates game-like 640x480 PNG frames (shardgan.synthetic), then measures in one run, for PNG and raw storage
at 88x66: (a) the bound, one core's plain decode+resize+encode loop, and the same loop in
a plain process pool over all cores (what the cores give together); (b) `shardgan pack`
with 1 worker and with all workers (and any `--workers` counts); (c) litdata `optimize()`
with all workers, in its own subprocess (it switches multiprocessing to spawn), doing the
same per-frame work and given the same thing to store: PNG bytes for png, the uint8 array
for raw. Contenders are interleaved over rounds (rotating their order), so machine noise
hits all of them alike; figures are medians over rounds. `--profile` adds where pack's time
goes per stage. Prints ratios; the last line is JSON.

    .venv/bin/python tools/bench_pack.py [--quick] [--frames N] [--rounds R] [--profile] [--src DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from shardgan.chunks import EncodeOptions
from shardgan.cut import CutOptions
from shardgan.frames import REDUCING_GAP, RESAMPLE, FrameSpec
from shardgan.pack import PackOptions, pack_dataset
from shardgan.shards import encode_image
from shardgan.summary import PackSummary
from shardgan.synthetic import write_frames

WIDTH, HEIGHT = 88, 66
FORMATS = ("png", "raw")
WORKER_STAGES = ("decode", "resize", "filter", "encode", "chunk write")
MAIN_STAGES = ("scan", "start-up", "encode stage", "write stage", "clean-up")
TARGETS = {"one_worker_vs_bound": 0.95, "all_workers_vs_cores_x_bound": 0.9, "all_workers_vs_litdata": 1.2}

LITDATA_SCRIPT = """
import sys, time
from pathlib import Path
import numpy as np
from PIL import Image
from litdata import optimize

from shardgan.shards import encode_image

def encode(path):
    # The bound's work; litdata stores what it is given: PNG bytes, or the uint8 array for raw.
    pixels = np.asarray(Image.open(path).convert("RGB").resize(({w}, {h}), Image.Resampling.BILINEAR, reducing_gap=3.0))
    return {{"image": encode_image(pixels, "png") if {fmt!r} == "png" else pixels}}

if __name__ == "__main__":
    files = sorted(str(p) for p in Path(sys.argv[1]).rglob("*.png"))
    start = time.perf_counter()
    optimize(fn=encode, inputs=files, output_dir=sys.argv[2], num_workers={workers}, chunk_bytes="64MB", mode="overwrite")
    print("SECONDS", time.perf_counter() - start)
"""


def plain_frame(job: tuple[Path, str]) -> int:
    """The per-frame work with no framework: decode, resize, encode (same Pillow calls as pack)."""
    path, image_format = job
    image = Image.open(path).convert("RGB").resize((WIDTH, HEIGHT), RESAMPLE, reducing_gap=REDUCING_GAP)
    return len(encode_image(np.asarray(image), image_format))


def bound_loop(files: list[Path], image_format: str) -> float:
    """Frames/s of the plain loop on one core: the issue's bound."""
    start = time.perf_counter()
    for path in files:
        plain_frame((path, image_format))
    return len(files) / (time.perf_counter() - start)


def parallel_bound(files: list[Path], image_format: str, workers: int) -> float:
    """The plain loop in a plain process pool: what this machine's cores really give together."""
    start = time.perf_counter()
    with multiprocessing.get_context().Pool(workers) as pool:
        sum(pool.imap_unordered(plain_frame, [(p, image_format) for p in files], chunksize=8))
    return len(files) / (time.perf_counter() - start)


def shardgan_pack(src: Path, dst: Path, image_format: str, workers: int, summaries: list[PackSummary]) -> float:
    shutil.rmtree(dst, ignore_errors=True)
    options = PackOptions(EncodeOptions(FrameSpec(WIDTH, HEIGHT), image_format=image_format), CutOptions(shard_size_bytes=64 * 10**6))
    start = time.perf_counter()
    summaries.append(pack_dataset(src, dst, options, workers=workers, log=lambda line: None))
    return summaries[-1].inputs / (time.perf_counter() - start)


def litdata_optimize(src: Path, dst: Path, image_format: str, workers: int) -> float:
    """From a script file, not `python -c`: litdata's spawned workers must import `encode` from it
    (under -c they fail to unpickle it, and optimize() still returns, having written nothing)."""
    shutil.rmtree(dst, ignore_errors=True)
    script = dst.with_name("litdata_optimize.py")
    script.write_text(LITDATA_SCRIPT.format(w=WIDTH, h=HEIGHT, fmt=image_format, workers=workers))
    out = subprocess.run([sys.executable, str(script), str(src), str(dst)], capture_output=True, text=True, check=True).stdout
    seconds = float(next(line.split()[1] for line in out.splitlines() if line.startswith("SECONDS")))
    num_frames = len(list(src.rglob("*.png")))
    stored = sum(chunk["chunk_size"] for chunk in json.loads((dst / "index.json").read_text())["chunks"])
    if stored != num_frames:
        raise RuntimeError(f"litdata stored {stored} of {num_frames} frames; its workers failed (run {script} to see why)")
    return num_frames / seconds


def has_litdata() -> bool:
    try:
        import litdata  # noqa: F401
    except ImportError:
        return False
    return True


def tree_digest(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def run_rounds(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median frames/s of each contender; round r starts at contender r (rotation), so none is always first."""
    names = list(contenders)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rates[name].append(contenders[name]())
            print(f"  round {r + 1}/{rounds} {name}: {rates[name][-1]:.1f} frames/s", flush=True)
    return {name: statistics.median(values) for name, values in rates.items()}


def stage_profile(summaries: list[PackSummary], num_frames: int) -> dict[str, float]:
    """Median per stage over the runs: workers' stages in us/frame (summed over workers), main-process phases in s."""
    profile = {f"{s}_us_per_frame": statistics.median(x.stage_seconds[s] for x in summaries) / num_frames * 1e6 for s in WORKER_STAGES}
    profile.update({f"{s}_s": statistics.median(x.stage_seconds[s] for x in summaries) for s in MAIN_STAGES})
    profile["total_s"] = statistics.median(x.seconds for x in summaries)
    return {name.replace(" ", "_"): round(value, 3 if name.endswith("_s") else 1) for name, value in profile.items()}


def print_profile(fmt: str, workers: int, profile: dict[str, float], bound: float) -> None:
    per_frame = {s: profile[f"{s.replace(' ', '_')}_us_per_frame"] for s in WORKER_STAGES}
    stages = ", ".join(f"{s} {us:.0f}" for s, us in per_frame.items())
    print(f"[{fmt}] profile, {workers} worker(s), us/frame summed over workers: {stages}; total {sum(per_frame.values()):.0f} (bound loop {1e6 / bound:.0f})")
    phases = ", ".join(f"{s} {profile[s.replace(' ', '_') + '_s']:.3f}" for s in MAIN_STAGES)
    print(f"[{fmt}] profile, {workers} worker(s), main process wall s: {phases}; total {profile['total_s']:.3f}")


def bench_format(fmt: str, src: Path, tmp: Path, worker_counts: list[int], cores: int, rounds: int, profile: bool) -> dict:
    files = sorted(src.rglob("*.png"))
    summaries: dict[int, list[PackSummary]] = {w: [] for w in worker_counts}
    contenders: dict[str, Callable[[], float]] = {"bound_1core": lambda: bound_loop(files, fmt)}
    for w in worker_counts:
        contenders[f"pack_{w}w"] = lambda w=w: shardgan_pack(src, tmp / f"pack{w}", fmt, w, summaries[w])
    contenders[f"plain_pool_{cores}w"] = lambda: parallel_bound(files, fmt, cores)
    if has_litdata():
        contenders[f"litdata_{cores}w"] = lambda: litdata_optimize(src, tmp / "litdata", fmt, cores)
    print(f"[{fmt}] {rounds} rounds of: {', '.join(contenders)}", flush=True)
    fps = run_rounds(contenders, rounds)
    bound, one, every = fps["bound_1core"], fps["pack_1w"], fps[f"pack_{cores}w"]
    lit = fps.get(f"litdata_{cores}w")
    row: dict[str, object] = {f"{name}_fps": round(value, 1) for name, value in fps.items()}
    row["scaling"] = {str(w): {"fps": round(fps[f"pack_{w}w"], 1), "vs_workers_x_bound": round(fps[f"pack_{w}w"] / (w * bound), 3)} for w in worker_counts}
    row["ratio_1worker_vs_bound"] = round(one / bound, 3)
    row["ratio_allworkers_vs_cores_x_bound"] = round(every / (cores * bound), 3)
    row["ratio_allworkers_vs_plain_pool"] = round(every / fps[f"plain_pool_{cores}w"], 3)
    row["ratio_allworkers_vs_litdata"] = None if lit is None else round(every / lit, 3)
    row["identical_1_vs_all_workers"] = tree_digest(tmp / "pack1") == tree_digest(tmp / f"pack{cores}")
    print(f"[{fmt}] bound (1 core, plain loop): {bound:7.1f} frames/s")
    for w in worker_counts:
        print(f"[{fmt}] shardgan pack, {w} worker(s): {fps[f'pack_{w}w']:7.1f} frames/s = {fps[f'pack_{w}w'] / (w * bound):.3f}x {w} x bound")
    print(f"[{fmt}] 1 worker: {one / bound:.3f}x bound (target >= {TARGETS['one_worker_vs_bound']})")
    print(f"[{fmt}] {cores} workers: {every / (cores * bound):.3f}x {cores} x bound (target >= {TARGETS['all_workers_vs_cores_x_bound']})")
    print(f"[{fmt}] plain loop in a {cores}-process pool: {fps[f'plain_pool_{cores}w']:7.1f} frames/s; shardgan = {every / fps[f'plain_pool_{cores}w']:.3f}x that")
    if lit is None:
        print(f"[{fmt}] litdata not installed (pip install 'shardgan[bench]'): comparison skipped")
    else:
        print(f"[{fmt}] litdata optimize, {cores} workers: {lit:7.1f} frames/s; shardgan = {every / lit:.3f}x litdata (target >= {TARGETS['all_workers_vs_litdata']})")
    print(f"[{fmt}] 1-worker and {cores}-worker outputs byte-identical: {row['identical_1_vs_all_workers']}", flush=True)
    if profile:
        row["profile"] = {str(w): stage_profile(summaries[w], len(files)) for w in worker_counts}
        for w in worker_counts:
            print_profile(fmt, w, row["profile"][str(w)], bound)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="640x480 frames to generate")
    parser.add_argument("--quick", action="store_true", help="120 frames, one round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument("--workers", default="", help="extra pack worker counts for the scaling table, e.g. 4,8")
    parser.add_argument("--profile", action="store_true", help="also report pack's time per stage")
    parser.add_argument("--src", type=Path, help="pack these PNG frames (e.g. your own, or an earlier run's) instead of generating")
    args = parser.parse_args()
    num_frames, rounds = (120, 1) if args.quick else (args.frames, args.rounds)
    cores = len(os.sched_getaffinity(0))
    worker_counts = sorted({1, cores, *(int(w) for w in args.workers.split(",") if w)})
    results: dict[str, object] = {"frames": num_frames, "frame_size": "640x480", "pack_size": f"{WIDTH}x{HEIGHT}", "cores": cores, "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="bench_pack_") as tmp:
        src = args.src or Path(tmp) / "frames"
        if args.src:
            results["frames"] = len(list(src.rglob("*.png")))
            results["frame_size"] = "x".join(map(str, Image.open(next(src.rglob("*.png"))).size))
        else:
            print(f"generating {num_frames} 640x480 PNG frames ...", flush=True)
            write_frames(src, num_frames, 640, 480)
        for fmt in FORMATS:
            results[fmt] = bench_format(fmt, src, Path(tmp), worker_counts, cores, rounds, args.profile)
    rows = [results[fmt] for fmt in FORMATS]
    results["targets"] = {
        "one_worker_vs_bound": {"target": TARGETS["one_worker_vs_bound"], "met": all(r["ratio_1worker_vs_bound"] >= TARGETS["one_worker_vs_bound"] for r in rows)},
        "all_workers_vs_cores_x_bound": {
            "target": TARGETS["all_workers_vs_cores_x_bound"],
            "met": all(r["ratio_allworkers_vs_cores_x_bound"] >= TARGETS["all_workers_vs_cores_x_bound"] for r in rows),
        },
        "all_workers_vs_litdata": {
            "target": TARGETS["all_workers_vs_litdata"],
            "met": None if any(r["ratio_allworkers_vs_litdata"] is None for r in rows) else all(r["ratio_allworkers_vs_litdata"] >= TARGETS["all_workers_vs_litdata"] for r in rows),
        },
    }
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
