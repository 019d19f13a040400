"""Benchmark shardgan's loader at the hardware limit: against FFCV and two bounds, in one run.

The same distinct game frames (shardgan.synthetic) are written, at each size, as shardgan
shards (raw; jpg at quality 90 with 4:2:0 chroma, what FFCV's OpenCV encoder writes, and with
pack's default 4:4:4 as jpg444; png) and as FFCV .beton files (raw, jpg), and every contender
reads whole epochs of them from the page cache with the same batch size and thread count:

  shardgan  ShardLoader, uint8 (B, C, H, W) batches: `--workers` reading processes decode
            compressed shards, the training thread copies raw ones (with `--workers` torch
            threads sharing each copy);
  ffcv      ffcv.loader.Loader, `--workers` threads, RANDOM order (its own venv:
            `make ffcv-venv`; skipped with a line saying why where it cannot be built);
  memcpy    one process copying the stored pixel bytes of each batch into a batch buffer
            (np.take from one in-memory array): what reading raw samples cannot beat per core;
  decode    one process decoding the stored bytes of each batch in a plain loop, with the
            decoder the loader uses: what reading compressed samples cannot beat per core;
  procs     the same loop in `--workers` forked processes at once, timed after the fork: what
            this machine's cores deliver together (less than workers x one on a shared VM),
            the bound for the loader's reading processes;
  threads   the same loop on `--workers` Python threads: the alternative the reading
            processes were chosen over (a decoder holds the GIL for part of every image).

Rounds interleave the contenders (this machine is shared and noisy), each round `--epochs`
epochs of each (its median: an 88x66 raw epoch lasts ~30 ms, so one hiccup would decide a
round), after an untimed warm-up epoch (FFCV's compiles its pipeline); figures are medians of
the rounds.
Also: the time to the first batch of a new loader, one restored at 0 % and at 90 % of an
epoch, and a per-sample profile of the raw path. The last line is one JSON object with the
figures, each target and whether it was met.

    .venv/bin/python tools/bench_loader.py [--frames 12000] [--rounds 3] [--epochs 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from shardgan.config import DataConfig
from shardgan.loader import ShardLoader
from shardgan.manifest import Manifest, SplitInfo
from shardgan.plan import RankPlan, epoch_order
from shardgan.reader import ShardReader, shard_runs
from shardgan.shards import Sample, decode_image, encode_image, sample_key, write_shard
from shardgan.source import resolve_source
from shardgan.synthetic import game_frame

ROOT = Path(__file__).resolve().parents[1]
FFCV_PYTHON = ROOT / ".venv-ffcv" / "bin" / "python"
SIZES = ((88, 66), (64, 48))
STORED = {"raw": ("raw", None), "jpg": ("jpg", "420"), "jpg444": ("jpg", "444"), "png": ("png", None)}
"""Each shard set's (format, chroma): shardgan's jpg is encoded as FFCV's is (quality 90, 4:2:0)."""
FORMATS = tuple(STORED)
FFCV_FORMATS = ("raw", "jpg")
QUALITY = 90
SAMPLES_PER_SHARD = 1000
TARGETS = {  # name: (what, threshold, higher is better)
    "raw_vs_ffcv": ("shardgan raw / FFCV raw", 1.0, True),
    "jpg_vs_ffcv": ("shardgan jpg / FFCV jpg", 0.8, True),
    "png_vs_workers_x_decode": ("shardgan png / (workers x one-process decode bound)", 0.9, True),
    "png_vs_procs_decode": ("shardgan png / (the decode loop in workers processes at once)", 0.9, True),
    "raw_vs_workers_x_memcpy": ("shardgan raw / (workers x one-process memcpy bound)", 0.5, True),
    "restore_90_vs_0": ("first batch of a restore at 90 % / at 0 %", 1.2, False),
}


# -- data -----------------------------------------------------------------------------------


def write_data(work: Path, frames_n: int, width: int, height: int) -> dict[str, Path]:
    """frames.npy (for FFCV) and one shard directory per format, written once per size."""
    base = work / f"{width}x{height}_{frames_n}"
    out = {"frames": base / "frames.npy", **{fmt: base / fmt for fmt in FORMATS}}
    if all((out[fmt] / "manifest.json").exists() for fmt in FORMATS) and out["frames"].exists():
        return out
    print(f"writing {frames_n} frames at {width}x{height} as raw, jpg and png shards ...", flush=True)
    base.mkdir(parents=True, exist_ok=True)
    frames = np.stack([game_frame(i, width, height) for i in range(frames_n)])
    np.save(out["frames"], frames)
    for fmt in FORMATS:
        out[fmt].mkdir(exist_ok=True)
        infos = []
        for n, start in enumerate(range(0, frames_n, SAMPLES_PER_SHARD)):
            samples = [Sample(sample_key(i), encode_image(frames[i], STORED[fmt][0], QUALITY, STORED[fmt][1]), {"src": f"frame_{i:06d}.png"})
                       for i in range(start, min(frames_n, start + SAMPLES_PER_SHARD))]
            infos.append(write_shard(out[fmt] / f"train-{n:06d}.tar", samples, STORED[fmt][0]))
        Manifest(width, height, 3, STORED[fmt][0], {"train": SplitInfo(infos)}, root=out[fmt]).write(out[fmt])
    return out


def stored_images(shards: Path) -> tuple[list[bytes], tuple[int, int, int], str]:
    """Every sample's stored image bytes, in memory (what the bounds work from)."""
    source = resolve_source(DataConfig(shards=str(shards)), "train")
    reader = ShardReader(source)
    positions = np.concatenate([np.stack([np.full(s.num_samples, k), np.arange(s.num_samples)], 1) for k, s in enumerate(source.shards)])
    _, images, corrupt = reader.encoded(positions)
    assert not corrupt
    reader.close()
    return images, reader.shape, source.manifest.image_format


# -- contenders -------------------------------------------------------------------------------


def loader_epoch(loader: ShardLoader) -> float:
    """Samples/s over one whole epoch of a loader that already ran its warm-up epoch."""
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["key"])
    return count / (time.perf_counter() - start)


def memcpy_epoch(payloads: np.ndarray, batch_size: int, seed: int) -> float:
    """One process, one C copy per batch: random samples' pixel bytes into a batch buffer."""
    order = np.random.default_rng(seed).permutation(len(payloads))
    out = np.empty((batch_size, payloads.shape[1]), np.uint8)
    start = time.perf_counter()
    for lo in range(0, len(order) - batch_size + 1, batch_size):
        np.take(payloads, order[lo : lo + batch_size], axis=0, out=out)
    return (len(order) // batch_size * batch_size) / (time.perf_counter() - start)


def decode_epoch(images: list[bytes], shape: tuple[int, int, int], image_format: str, batch_size: int, seed: int) -> float:
    """One process, a plain loop: decode random samples' stored bytes into a batch buffer."""
    order = np.random.default_rng(seed).permutation(len(images))
    out = np.empty((batch_size, *shape), np.uint8)
    start = time.perf_counter()
    for lo in range(0, len(order) - batch_size + 1, batch_size):
        for j, i in enumerate(order[lo : lo + batch_size].tolist()):
            decode_image(images[i], image_format, *shape, out=out[j])
    return (len(order) // batch_size * batch_size) / (time.perf_counter() - start)


def decode_parallel_epoch(images: list[bytes], shape: tuple[int, int, int], image_format: str, batch_size: int, seed: int, count: int, processes: bool) -> float:
    """decode_epoch's batches, shared out over `count` Python threads, or forked processes."""
    order = np.random.default_rng(seed).permutation(len(images))
    batches = [order[lo : lo + batch_size] for lo in range(0, len(order) - batch_size + 1, batch_size)]

    def work(part: list[np.ndarray]) -> None:
        out = np.empty((batch_size, *shape), np.uint8)
        for batch in part:
            for j, i in enumerate(batch.tolist()):
                decode_image(images[i], image_format, *shape, out=out[j])

    if not processes:
        pool = [threading.Thread(target=work, args=(batches[t::count],)) for t in range(count)]
        start = time.perf_counter()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        return len(batches) * batch_size / (time.perf_counter() - start)
    go_read, go_write = os.pipe()
    pids = []
    for t in range(count):  # forked before the clock starts: the bound times the decoding only
        pid = os.fork()
        if pid == 0:
            try:
                os.close(go_write)
                os.read(go_read, 1)
                work(batches[t::count])
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(go_read)
    start = time.perf_counter()
    os.write(go_write, b"g" * count)
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(go_write)
    return len(batches) * batch_size / (time.perf_counter() - start)


def ffcv_epochs(frames: Path, fmt: str, work: Path, batch_size: int, workers: int, epochs: int) -> dict | str:
    """FFCV in its own venv (tools/ffcv_peer.py); a string says why it could not run."""
    if not FFCV_PYTHON.exists():
        return "not built (make ffcv-venv)"
    cmd = [str(FFCV_PYTHON), str(ROOT / "tools" / "ffcv_peer.py"), "--frames", str(frames), "--format", fmt, "--quality", str(QUALITY),
           "--work", str(work), "--batch-size", str(batch_size), "--threads", str(workers), "--epochs", str(epochs)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return f"failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- latency ------------------------------------------------------------------------------------


def first_batch_s(cfg: DataConfig, fraction: float | None, trials: int = 5) -> float:
    """Median seconds from a new loader (restored at `fraction` of an epoch) to its first batch."""
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        loader = ShardLoader(cfg)
        if fraction is not None:
            state = loader.state_dict()
            state["samples_seen"] = int(fraction * loader.batches_per_epoch) * loader.global_batch
            loader.load_state_dict(state)
        next(iter(loader))
        times.append(time.perf_counter() - start)
        loader.close()
    return statistics.median(times)


def raw_profile(shards: Path, batch_size: int, rounds: int) -> dict[str, float]:
    """Microseconds per raw sample in the training thread (torch's threads sharing each copy),
    medians over `rounds` epochs: the plan's position lookup, the bare copy (one index_select
    per shard run of each group, over the rows the reader copies), the whole read (layout
    lookup, checks, keys, the copy) and the rest of the loader (ring slots, hand-out)."""
    loader = ShardLoader(DataConfig(shards=str(shards), batch_size=batch_size, num_workers=0, pin_memory=False))
    loader_epoch(loader)  # warm-up: layouts derived, pages mapped
    reader, group = loader._reader, loader._group
    plan = RankPlan(0, 0, loader.source.num_samples, 1, 0, batch_size)
    order = epoch_order([s.num_samples for s in loader.source.shards], 0, 0)
    n = plan.num_batches * batch_size
    out = np.empty((group, batch_size, *reader.shape), np.uint8)
    positions = plan.batch_positions(order)
    runs = []  # (layout, mapping, indices, out) of every shard run of every group, as _copy_raw finds them
    for g in range(0, plan.num_batches, group):
        flat = positions[g : g + group].reshape(-1, 2)
        for lo, hi in shard_runs(flat[:, 0]):
            mapped = reader._map(int(flat[lo, 0]))
            runs.append((reader._layout(int(flat[lo, 0]), mapped), mapped, flat[lo:hi, 1], torch.from_numpy(out.reshape(group * batch_size, -1)[: hi - lo])))

    def timed(work: Callable[[], object]) -> float:
        start = time.perf_counter()
        work()
        return (time.perf_counter() - start) / n * 1e6

    def read() -> None:
        for g in range(0, plan.num_batches, group):
            reader.read_batches(positions[g : g + group], out[: min(group, plan.num_batches - g)])

    figures: dict[str, list[float]] = {}
    for _ in range(rounds):
        figures.setdefault("plan_us", []).append(timed(lambda: plan.batch_positions(order)))
        figures.setdefault("copy_us", []).append(timed(lambda: [checked.pixels(mapped, indices, out=o) for checked, mapped, indices, o in runs]))
        figures.setdefault("read_us", []).append(timed(read))
        figures.setdefault("total_us", []).append(1e6 / loader_epoch(loader))
    r = {k: statistics.median(v) for k, v in figures.items()}
    return {**r, "checks_us": max(0.0, r["read_us"] - r["copy_us"]), "hand_out_us": max(0.0, r["total_us"] - r["read_us"] - r["plan_us"]), "group": group}


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12_000, help="distinct frames per size (an epoch)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each contender per round (the round's figure is their median)")
    parser.add_argument("--workers", type=int, default=2, help="reading threads for shardgan and FFCV")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", help="keep the data here and reuse it (default: a temp dir)")
    args = parser.parse_args()
    workers, batch = args.workers, args.batch_size
    r: dict[str, object] = {"frames": args.frames, "workers": workers, "batch_size": batch, "rounds": args.rounds, "epochs": args.epochs, "cores": len(os.sched_getaffinity(0))}

    def epochs(measure: Callable[[], float]) -> float:
        return statistics.median(measure() for _ in range(args.epochs))

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp_name:
        work = Path(args.work or tmp_name)
        for width, height in SIZES:
            size = f"{width}x{height}"
            data = write_data(work, args.frames, width, height)
            loaders = {fmt: ShardLoader(DataConfig(shards=str(data[fmt]), batch_size=batch, num_workers=workers, pin_memory=False)) for fmt in FORMATS}
            for loader in loaders.values():
                loader_epoch(loader)  # warm-up
            stored = {fmt: stored_images(data[fmt]) for fmt in FORMATS}
            payloads = np.stack([np.frombuffer(b, np.uint8)[-int(np.prod(stored["raw"][1])):] for b in stored["raw"][0]])
            rates: dict[str, list[float]] = {}
            ffcv_notes: dict[str, str] = {}
            for round_ in range(args.rounds):
                for fmt in FORMATS:
                    rates.setdefault(f"shardgan_{fmt}", []).append(epochs(lambda: loader_epoch(loaders[fmt])))
                    if fmt in FFCV_FORMATS:
                        got = ffcv_epochs(data["frames"], fmt, work / f"ffcv_{size}", batch, workers, epochs=args.epochs)
                        if isinstance(got, str):
                            ffcv_notes[fmt] = got
                        else:
                            rates.setdefault(f"ffcv_{fmt}", []).append(got["median"])
                            r[f"ffcv_{fmt}_first_epoch_sps_{size}"] = got["first_epoch"]
                            r["ffcv_version"] = got.get("ffcv")
                    if fmt == "raw":
                        rates.setdefault("memcpy_raw", []).append(epochs(lambda: memcpy_epoch(payloads, batch, round_)))
                    else:
                        rates.setdefault(f"decode_{fmt}", []).append(epochs(lambda: decode_epoch(*stored[fmt], batch, round_)))
                        rates.setdefault(f"threads_{fmt}", []).append(epochs(lambda: decode_parallel_epoch(*stored[fmt], batch, round_, workers, processes=False)))
                        rates.setdefault(f"procs_{fmt}", []).append(epochs(lambda: decode_parallel_epoch(*stored[fmt], batch, round_, workers, processes=True)))
                print(f"  {size} round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()), flush=True)
            for name, values in rates.items():
                r[f"{name}_sps_{size}"] = statistics.median(values)
            for fmt, note in ffcv_notes.items():
                print(f"FFCV {fmt} at {size}: skipped, {note}")
                r[f"ffcv_{fmt}_sps_{size}"] = None
            for loader in loaders.values():
                loader.close()
            if (width, height) == SIZES[0]:
                cfg = DataConfig(shards=str(data["raw"]), batch_size=batch, num_workers=workers, pin_memory=False)
                r["first_batch_new_s"] = first_batch_s(cfg, None)
                r["restore_0_s"] = first_batch_s(cfg, 0.0)
                r["restore_90_s"] = first_batch_s(cfg, 0.9)
                r.update({f"profile_raw_{k}": v for k, v in raw_profile(data["raw"], batch, 5).items()})
                r["bytes_per_sample"] = {fmt: sum(s.num_bytes for s in resolve_source(DataConfig(shards=str(data[fmt])), "train").shards) / args.frames for fmt in FORMATS}
        report(r, workers)


def report(r: dict, workers: int) -> None:
    """The table, the ratios against their targets (at the first size), and the JSON line."""
    for width, height in SIZES:
        size = f"{width}x{height}"
        print(f"\n{size}, {r['frames']} samples an epoch, batch {r['batch_size']}, {workers} workers, medians of {r['rounds']} rounds x {r['epochs']} epochs (samples/s):")
        for fmt in FORMATS:
            ffcv = r.get(f"ffcv_{fmt}_sps_{size}")
            bound = r[f"memcpy_raw_sps_{size}"] if fmt == "raw" else r[f"decode_{fmt}_sps_{size}"]
            print(f"  {fmt:4s} shardgan {r[f'shardgan_{fmt}_sps_{size}']:>10,.0f}   FFCV "
                  + (f"{ffcv:>10,.0f}" if ffcv else f"{'-':>10s}") + f"   one-process {'memcpy' if fmt == 'raw' else 'decode'} bound {bound:>10,.0f}"
                  + ("" if fmt == "raw" else f"   {workers} decoding threads {r[f'threads_{fmt}_sps_{size}']:>9,.0f}"
                                            f"   {workers} decoding processes {r[f'procs_{fmt}_sps_{size}']:>9,.0f}"))
    size = f"{SIZES[0][0]}x{SIZES[0][1]}"
    ffcv_raw, ffcv_jpg = r.get(f"ffcv_raw_sps_{size}"), r.get(f"ffcv_jpg_sps_{size}")
    ratios = {
        "raw_vs_ffcv": r[f"shardgan_raw_sps_{size}"] / ffcv_raw if ffcv_raw else None,
        "jpg_vs_ffcv": r[f"shardgan_jpg_sps_{size}"] / ffcv_jpg if ffcv_jpg else None,
        "png_vs_workers_x_decode": r[f"shardgan_png_sps_{size}"] / (workers * r[f"decode_png_sps_{size}"]),
        "png_vs_procs_decode": r[f"shardgan_png_sps_{size}"] / r[f"procs_png_sps_{size}"],
        "raw_vs_workers_x_memcpy": r[f"shardgan_raw_sps_{size}"] / (workers * r[f"memcpy_raw_sps_{size}"]),
        "restore_90_vs_0": r["restore_90_s"] / r["restore_0_s"],
    }
    info = {
        "jpg444_vs_ffcv": r[f"shardgan_jpg444_sps_{size}"] / ffcv_jpg if ffcv_jpg else None,
        "jpg_vs_procs_decode": r[f"shardgan_jpg_sps_{size}"] / r[f"procs_jpg_sps_{size}"],
        **{f"cores_scaling_{fmt}": r[f"procs_{fmt}_sps_{size}"] / (workers * r[f"decode_{fmt}_sps_{size}"]) for fmt in ("jpg", "png")},
    }
    print(f"\nat {size}: " + ", ".join(f"{k} " + ("-" if v is None else f"{v:.2f}") for k, v in info.items())
          + f"  (cores_scaling: {workers} processes decoding at once / {workers} x one alone)")
    print(f"targets at {size}:")
    met = {}
    for name, (what, threshold, higher) in TARGETS.items():
        value = ratios[name]
        met[name] = None if value is None else (value >= threshold if higher else value <= threshold)
        verdict = "not measured (FFCV skipped)" if value is None else ("met" if met[name] else "MISSED")
        print(f"  {what}: " + ("-" if value is None else f"{value:.2f}") + f" (target {'>=' if higher else '<='} {threshold}) {verdict}")
    print(f"first batch of a new loader {r['first_batch_new_s'] * 1e3:.1f} ms; restored at 0 % {r['restore_0_s'] * 1e3:.1f} ms, "
          f"at 90 % {r['restore_90_s'] * 1e3:.1f} ms")
    print(f"raw path per sample, groups of {r['profile_raw_group']} batches: " + ", ".join(f"{k} {r[f'profile_raw_{k}']:.2f} us" for k in ("plan_us", "copy_us", "checks_us", "hand_out_us", "total_us")))
    out = {**r, "ratios": {**ratios, **info}, "targets": {k: {"threshold": t[1], "met": met[k]} for k, t in TARGETS.items()}}
    print(json.dumps(_rounded(out), sort_keys=True))


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    main()
