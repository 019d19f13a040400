"""Benchmark `shardgan pack` against the one-core bound and (if installed) litdata's optimize().

Generates seed-like 640x480 PNG frames, then measures in one run, for PNG and raw storage
at 88x66: (a) the bound, one core's plain decode+resize+encode loop, and the same loop in
a plain process pool over all cores (what the cores give together); (b) `shardgan pack`
with 1 worker and with all workers; (c) litdata `optimize()` with all workers, in its own
subprocess (it switches multiprocessing to spawn). Prints ratios; the last line is JSON.

    .venv/bin/python tools/bench_pack.py [--quick] [--frames N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shardgan.frames import REDUCING_GAP, RESAMPLE  # noqa: E402
from shardgan.pack import PackOptions, pack_dataset  # noqa: E402
from shardgan.shards import encode_image  # noqa: E402
from tests.conftest import write_frames  # noqa: E402

WIDTH, HEIGHT = 88, 66
FORMATS = ("png", "raw")

LITDATA_SCRIPT = """
import sys, time
from pathlib import Path
import numpy as np
from PIL import Image
from litdata import optimize

def encode(path):
    image = Image.open(path).convert("RGB").resize(({w}, {h}), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return {{"image": image if "{fmt}" == "png" else np.asarray(image)}}

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
    """The plain loop in a plain process pool: what this machine's cores really give together
    (hyper-threads and memory bandwidth make it less than cores x the one-core bound)."""
    start = time.perf_counter()
    with multiprocessing.get_context().Pool(workers) as pool:
        sum(pool.imap_unordered(plain_frame, [(p, image_format) for p in files], chunksize=8))
    return len(files) / (time.perf_counter() - start)


def shardgan_pack(src: Path, dst: Path, image_format: str, workers: int) -> float:
    shutil.rmtree(dst, ignore_errors=True)
    options = PackOptions(WIDTH, HEIGHT, image_format=image_format, shard_size_bytes=64 * 10**6)
    start = time.perf_counter()
    pack_dataset(src, dst, options, workers=workers, log=lambda line: None)
    return len(list(src.rglob("*.png"))) / (time.perf_counter() - start)


def litdata_optimize(src: Path, dst: Path, image_format: str, workers: int) -> float | None:
    try:
        import litdata  # noqa: F401
    except ImportError:
        return None
    shutil.rmtree(dst, ignore_errors=True)
    script = LITDATA_SCRIPT.format(w=WIDTH, h=HEIGHT, fmt=image_format, workers=workers)
    out = subprocess.run([sys.executable, "-c", script, str(src), str(dst)], capture_output=True, text=True, check=True).stdout
    seconds = float(next(line.split()[1] for line in out.splitlines() if line.startswith("SECONDS")))
    return len(list(src.rglob("*.png"))) / seconds


def tree_digest(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="640x480 frames to generate")
    parser.add_argument("--quick", action="store_true", help="120 frames, one repeat")
    parser.add_argument("--repeats", type=int, default=2, help="best of N for every measurement")
    args = parser.parse_args()
    num_frames, repeats = (120, 1) if args.quick else (args.frames, args.repeats)
    cores = len(os.sched_getaffinity(0))
    results: dict[str, object] = {"frames": num_frames, "frame_size": "640x480", "pack_size": f"{WIDTH}x{HEIGHT}", "cores": cores}
    with tempfile.TemporaryDirectory(prefix="bench_pack_") as tmp:
        src = Path(tmp) / "frames"
        print(f"generating {num_frames} 640x480 PNG frames ...", flush=True)
        write_frames(src, num_frames, 640, 480)
        files = sorted(src.rglob("*.png"))
        for fmt in FORMATS:
            bound = max(bound_loop(files, fmt) for _ in range(repeats))
            one = max(shardgan_pack(src, Path(tmp) / "one", fmt, 1) for _ in range(repeats))
            every = max(shardgan_pack(src, Path(tmp) / "all", fmt, cores) for _ in range(repeats))
            plain_all = max(parallel_bound(files, fmt, cores) for _ in range(repeats))
            lit = litdata_optimize(src, Path(tmp) / "litdata", fmt, cores)
            identical = tree_digest(Path(tmp) / "one") == tree_digest(Path(tmp) / "all")
            row = {
                "bound_1core_fps": round(bound, 1),
                "pack_1worker_fps": round(one, 1),
                f"pack_{cores}workers_fps": round(every, 1),
                "litdata_fps": None if lit is None else round(lit, 1),
                "ratio_1worker_vs_bound": round(one / bound, 3),
                "ratio_allworkers_vs_cores_x_bound": round(every / (cores * bound), 3),
                f"plain_pool_{cores}workers_fps": round(plain_all, 1),
                "ratio_allworkers_vs_plain_pool": round(every / plain_all, 3),
                "ratio_allworkers_vs_litdata": None if lit is None else round(every / lit, 3),
                "identical_1_vs_all_workers": identical,
            }
            results[fmt] = row
            print(f"[{fmt}] bound (1 core, plain loop): {bound:7.1f} frames/s")
            print(f"[{fmt}] shardgan pack, 1 worker:    {one:7.1f} frames/s  = {one / bound:.2f}x bound (target >= 0.8)")
            print(f"[{fmt}] shardgan pack, {cores} workers:   {every:7.1f} frames/s  = {every / (cores * bound):.2f}x {cores} x bound (target >= 0.8)")
            print(f"[{fmt}] plain loop in a {cores}-process pool: {plain_all:7.1f} frames/s; shardgan = {every / plain_all:.2f}x that")
            if lit is None:
                print(f"[{fmt}] litdata not installed (pip install 'shardgan[bench]'): comparison skipped")
            else:
                print(f"[{fmt}] litdata optimize, {cores} workers: {lit:7.1f} frames/s; shardgan = {every / lit:.2f}x litdata (target >= 1.0)")
            print(f"[{fmt}] 1-worker and {cores}-worker outputs byte-identical: {identical}", flush=True)
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
