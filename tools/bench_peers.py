"""Benchmark shardgan's loader against the streaming peers: the original project's pipeline, plain webdataset, litdata, http.

(The loading-speed limit, FFCV and the memcpy and decode bounds, is tools/bench_loader.py.)

Generates 640x480 PNG frames like the original project's (~280 KB), packs them to 88x66
with `shardgan pack` (PNG and raw), and replicates the packed shards (hard links) to
make an epoch long enough to time. Then, in one run, with the same worker count and
batch size for all, it prints steady-state samples/s (the first batch, i.e. worker
start-up, is excluded everywhere) for:

  (a) original: torchvision ImageFolder over the 640x480 PNGs, Resize + RandomCrop +
      ColorJitter + ToTensor + Normalize, in a DataLoader (includes augmentation);
  (b) shardgan ShardLoader, PNG and raw shards: uint8 (B, C, H, W) batches; "+aug" also
      runs shardgan.augment on the CPU in the main process (what the original project's figure includes);
  (c) plain webdataset: WebDataset + shuffle(1000) + decode("rgb8") + batched, same shards;
  (d) litdata StreamingDataset + StreamingDataLoader over the same samples written with its
      optimize() (own subprocess; skipped when litdata is not installed);
  (e) the bound: one process reading the tars and decoding in a plain loop;

and the time to the first batch after a restore at 0% and at 90% of an epoch.

Over http (a `python -m http.server` on 127.0.0.1 serving the PNG epoch), interleaved over
--http-rounds rounds, medians of whole-epoch samples/s (downloads included):

  (f) shardgan, cold cache (emptied before each round): fetch + verify + prefetch + read;
  (g) shardgan, warm cache: every shard already on this node;
  (h) plain webdataset over the same URLs (its default: a curl pipe per shard), as (c);
  (i) shardgan over the same shards as local files, the reference for (g).

Ratios follow; the last line is one JSON object.

    .venv/bin/python tools/bench_peers.py [--quick] [--workers 2] [--only-http]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shardgan.augment import augment
from shardgan.chunks import EncodeOptions
from shardgan.config import DataConfig
from shardgan.cut import CutOptions
from shardgan.loader import ShardLoader
from shardgan.manifest import Manifest, SplitInfo, load_manifest
from shardgan.frames import FrameSpec
from shardgan.pack import PackOptions, pack_dataset
from shardgan.shards import EXTENSIONS, decode_image
from shardgan.synthetic import game_frame

WIDTH, HEIGHT = 88, 66
FORMATS = ("png", "raw")

LITDATA_SCRIPT = """
import io, sys, time
import numpy as np
from PIL import Image
from litdata import optimize, StreamingDataset, StreamingDataLoader

from shardgan.manifest import load_manifest
from shardgan.shards import read_sample

FMT, EXT = {fmt!r}, {ext!r}

def encode(item):
    path, start, end = item
    with open(path, "rb") as f:
        data = read_sample(f, start, end)[EXT]
    if FMT == "png":
        return {{"image": data}}
    return {{"image": np.frombuffer(data, np.uint8, offset=len(data) - {h} * {w} * 3).reshape({h}, {w}, 3).copy()}}

class PngDataset(StreamingDataset):
    def __getitem__(self, index):
        item = super().__getitem__(index)
        if FMT == "png":
            item["image"] = np.asarray(Image.open(io.BytesIO(item["image"])).convert("RGB"))
        return item


if __name__ == "__main__":
    shards, out, workers, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    manifest = load_manifest(shards)
    items = [(str(manifest.shard_path(s)), s.offsets[i], s.offsets[i + 1])
             for s in manifest.split("train").shards for i in range(s.num_samples)]
    optimize(fn=encode, inputs=items, output_dir=out, num_workers=workers, chunk_bytes="8MB", mode="overwrite", verbose=False)
    loader = StreamingDataLoader(PngDataset(out, shuffle=True), batch_size=batch, num_workers=workers)
    count, first = 0, None
    for batch_ in loader:
        if first is None:
            first = time.perf_counter()
        else:
            count += len(batch_["image"])
    print("SPS", count / (time.perf_counter() - first))
"""


# -- data -----------------------------------------------------------------------------------


def original_like_frame(index: int) -> Image.Image:
    """A 640x480 game-like frame whose PNG is ~280 KB, like the original project's (a smooth upscale)."""
    return Image.fromarray(game_frame(index, 160, 120)).resize((640, 480), Image.Resampling.BILINEAR)


def write_original_frame(args: tuple[Path, int]) -> None:
    directory, index = args
    path = directory / f"run{index % 3}" / f"frame_{index:05d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    original_like_frame(index).save(path, compress_level=1)


def write_frames(directory: Path, count: int, workers: int) -> None:
    with multiprocessing.Pool(workers) as pool:
        pool.map(write_original_frame, [(directory, i) for i in range(count)])


def replicate(packed: Path, out: Path, epoch_samples: int) -> Manifest:
    """Hard-link the packed shards repeatedly into `out` until the train split has >= epoch_samples."""
    manifest = load_manifest(packed)
    base = manifest.split("train").shards
    copies = -(-epoch_samples // sum(s.num_samples for s in base))
    out.mkdir(parents=True)
    shards = []
    for n in range(copies * len(base)):
        shard = replace(base[n % len(base)], name=f"train-{n:06d}.tar")
        os.link(packed / base[n % len(base)].name, out / shard.name)
        shards.append(shard)
    replicated = replace(manifest, splits={"train": SplitInfo(shards)}, root=out)
    replicated.write(out)
    return replicated


def prepare_data(work: Path, frames_n: int, epoch_samples: int, cores: int) -> dict[str, Path]:
    """Frames, packed shards and replicated epochs under `work` (kept there when --work is given)."""
    if not (work / "frames").is_dir():
        print(f"generating {frames_n} 640x480 PNG frames ...", flush=True)
        write_frames(work / "frames", frames_n, cores)
    shards = {}
    for fmt in FORMATS:
        shards[fmt] = work / f"epoch_{fmt}"
        if shards[fmt].is_dir():
            continue
        print(f"packing to {WIDTH}x{HEIGHT} {fmt} ...", flush=True)
        options = PackOptions(EncodeOptions(FrameSpec(WIDTH, HEIGHT), image_format=fmt, blank_threshold=0), CutOptions(samples_per_shard=128))
        pack_dataset(work / "frames", work / f"packed_{fmt}", options, log=lambda line: None)
        replicate(work / f"packed_{fmt}", shards[fmt], epoch_samples)
    return shards


# -- timing ---------------------------------------------------------------------------------


def steady_rate(batches: Iterable, size_of=len, max_samples: int | None = None) -> float:
    """Samples/s after the first batch (worker start-up excluded)."""
    count, first = 0, None
    for batch in batches:
        if first is None:
            first = time.perf_counter()
            continue
        count += size_of(batch)
        if max_samples is not None and count >= max_samples:
            break
    return count / (time.perf_counter() - first)


def original_pipeline(frames: Path, workers: int, batch_size: int) -> float:
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.Resize((HEIGHT + 2, WIDTH + 2)),
        transforms.RandomCrop((HEIGHT, WIDTH)),
        transforms.ColorJitter(0.05, 0.05, 0.05),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    dataset = datasets.ImageFolder(str(frames), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    return steady_rate(loader, lambda b: len(b[0]))


def data_config(shards: Path, workers: int, batch_size: int) -> DataConfig:
    return DataConfig(shards=str(shards), batch_size=batch_size, num_workers=workers, pin_memory=False)


def shardgan_loader(shards: Path, workers: int, batch_size: int, with_augment: bool = False) -> float:
    cfg = data_config(shards, workers, batch_size)
    loader = ShardLoader(cfg)
    if not with_augment:
        return steady_rate(loader, lambda b: len(b["key"]))
    generator = torch.Generator().manual_seed(0)
    return steady_rate((augment(b["image"], cfg, generator) for b in loader))


def plain_webdataset(shards: Path, image_format: str, workers: int, batch_size: int) -> float:
    import webdataset as wds

    urls = [str(p) for p in sorted(shards.glob("train-*.tar"))]
    ext = EXTENSIONS[image_format]
    dataset = (
        wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False)
        .shuffle(1000)
        .decode("rgb8")
        .to_tuple(ext)
        .batched(batch_size, partial=False)
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    return steady_rate(loader, lambda b: len(b[0]))


def litdata_loader(shards: Path, out: Path, image_format: str, workers: int, batch_size: int) -> float | None:
    try:
        import litdata  # noqa: F401
    except ImportError:
        return None
    script = out.with_suffix(".py")  # a file, not -c: litdata's workers are spawned and re-import it
    script.write_text(LITDATA_SCRIPT.format(fmt=image_format, ext=EXTENSIONS[image_format], h=HEIGHT, w=WIDTH))
    done = subprocess.run([sys.executable, str(script), str(shards), str(out), str(workers), str(batch_size)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"litdata run failed: {done.stderr[-2000:]}")
    return float(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("SPS")))


def bound_loop(shards: Path, image_format: str, batch_size: int, max_samples: int) -> float:
    """One process, no framework: read the tars in order, decode, stack batches."""
    ext = "." + EXTENSIONS[image_format]

    def batches() -> Iterable[np.ndarray]:
        images = []
        for path in sorted(shards.glob("train-*.tar")):
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.name.endswith(ext):
                        images.append(decode_image(tar.extractfile(member).read(), image_format, HEIGHT, WIDTH, 3))
                        if len(images) == batch_size:
                            yield np.stack(images)
                            images = []

    return steady_rate(batches(), max_samples=max_samples)


def restore_seconds(cfg: DataConfig, fraction: float, trials: int = 3) -> float:
    """Median time from building a loader + loading a state at `fraction` of an epoch to its first batch."""
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        loader = ShardLoader(cfg)
        state = loader.state_dict()
        global_batch = loader.global_batch
        state["samples_seen"] = int(fraction * loader.batches_per_epoch) * global_batch
        loader.load_state_dict(state)
        it = iter(loader)
        next(it)
        times.append(time.perf_counter() - start)
        it.close()
    return statistics.median(times)


# -- over http ------------------------------------------------------------------------------


def epoch_rate(batches: Iterable, size_of) -> float:
    """Samples/s over a whole epoch, the first batch (and its downloads) included."""
    start, count = time.perf_counter(), 0
    for batch in batches:
        count += size_of(batch)
    return count / (time.perf_counter() - start)


def serve_http(directory: Path) -> tuple[subprocess.Popen, str]:
    """A stdlib file server on 127.0.0.1 in its own process (not competing for this one's GIL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("http.server did not start")


def http_rows(shards: Path, workers: int, batch_size: int, rounds: int, cache: Path) -> dict[str, float]:
    """Rows (f)-(i), interleaved over rounds so drifting machine load hits all three alike."""
    names = sorted(p.name for p in shards.glob("train-*.tar"))
    proc, base = serve_http(shards)
    try:
        pattern = f"{base}/train-{{{names[0][6:12]}..{names[-1][6:12]}}}.tar"
        cfg = replace(data_config(shards, workers, batch_size), shards=pattern, cache_dir=str(cache))
        rates: dict[str, list[float]] = {"http_cold": [], "http_warm": [], "wds_http": [], "local": []}
        for _ in range(rounds):
            shutil.rmtree(cache, ignore_errors=True)
            rates["http_cold"].append(epoch_rate(ShardLoader(cfg), lambda b: len(b["key"])))
            rates["http_warm"].append(epoch_rate(ShardLoader(cfg), lambda b: len(b["key"])))
            rates["wds_http"].append(webdataset_http(base, names, workers, batch_size))
            rates["local"].append(epoch_rate(ShardLoader(data_config(shards, workers, batch_size)), lambda b: len(b["key"])))
        out = {f"{row}_sps": statistics.median(values) for row, values in rates.items()}
        out["restore_0_http_s"] = restore_seconds(cfg, 0.0)  # warm cache
        out["restore_90_http_s"] = restore_seconds(cfg, 0.9)
    finally:
        proc.kill()
        proc.wait()
    return out


def webdataset_http(base: str, names: list[str], workers: int, batch_size: int) -> float:
    import webdataset as wds

    urls = [f"{base}/{name}" for name in names]
    dataset = (
        wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False)
        .shuffle(1000)
        .decode("rgb8")
        .to_tuple("png")
        .batched(batch_size, partial=False)
    )
    return epoch_rate(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers), lambda b: len(b[0]))


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and a shorter epoch")
    parser.add_argument("--frames", type=int, default=512, help="640x480 frames to generate")
    parser.add_argument("--epoch-samples", type=int, default=8192, help="packed samples per timed epoch (shards replicated)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (shardgan: reading processes) for every loader")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--http-rounds", type=int, default=3, help="interleaved rounds of the http rows (medians)")
    parser.add_argument("--only-http", action="store_true", help="only the http rows (f)-(i)")
    parser.add_argument("--work", help="keep generated frames and shards here and reuse them (default: a temp dir)")
    args = parser.parse_args()
    frames_n, epoch_samples = (384, 4096) if args.quick else (args.frames, args.epoch_samples)
    workers, batch = args.workers, args.batch_size
    r: dict[str, object] = {"frames": frames_n, "epoch_samples": epoch_samples, "workers": workers, "batch_size": batch,
                            "cores": len(os.sched_getaffinity(0)), "size": f"{WIDTH}x{HEIGHT}"}
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp_name:
        tmp = Path(args.work or tmp_name) / f"{frames_n}_{epoch_samples}"
        shards = prepare_data(tmp, frames_n, epoch_samples, r["cores"])
        if not args.only_http:
            r["original_sps"] = original_pipeline(tmp / "frames", workers, batch)
            print(f"(a) original ImageFolder pipeline (incl. augment): {r['original_sps']:9.0f} samples/s", flush=True)
        for fmt in FORMATS if not args.only_http else ():
            r[f"shardgan_{fmt}_sps"] = shardgan_loader(shards[fmt], workers, batch)
            r[f"shardgan_{fmt}_aug_sps"] = shardgan_loader(shards[fmt], workers, batch, with_augment=True)
            r[f"wds_{fmt}_sps"] = plain_webdataset(shards[fmt], fmt, workers, batch)
            r[f"litdata_{fmt}_sps"] = litdata_loader(shards[fmt], Path(tmp_name) / f"litdata_{fmt}", fmt, workers, batch)
            r[f"bound_{fmt}_sps"] = bound_loop(shards[fmt], fmt, batch, max_samples=epoch_samples // 2)
            print(f"(b) shardgan {fmt}: {r[f'shardgan_{fmt}_sps']:9.0f} samples/s (uint8 batches); "
                  f"+ CPU augment: {r[f'shardgan_{fmt}_aug_sps']:9.0f}", flush=True)
            print(f"(c) plain webdataset {fmt}: {r[f'wds_{fmt}_sps']:9.0f} samples/s", flush=True)
            lit = r[f"litdata_{fmt}_sps"]
            print(f"(d) litdata {fmt}: " + ("skipped (not installed; pip install '.[bench]')" if lit is None else f"{lit:9.0f} samples/s"), flush=True)
            print(f"(e) bound {fmt} (1 process, plain loop): {r[f'bound_{fmt}_sps']:9.0f} samples/s", flush=True)
        if not args.only_http:
            r["restore_0_s"] = restore_seconds(data_config(shards["png"], workers, batch), 0.0)
            r["restore_90_s"] = restore_seconds(data_config(shards["png"], workers, batch), 0.9)
            print(f"time to first batch after restore: at 0% {r['restore_0_s']:.3f} s, at 90% {r['restore_90_s']:.3f} s", flush=True)
        r.update(http_rows(shards["png"], workers, batch, args.http_rounds, Path(tmp_name) / "cache"))
        print(f"(f) shardgan png over http, cold cache: {r['http_cold_sps']:9.0f} samples/s (median of {args.http_rounds})", flush=True)
        print(f"(g) shardgan png over http, warm cache: {r['http_warm_sps']:9.0f} samples/s", flush=True)
        print(f"(h) plain webdataset png over http:     {r['wds_http_sps']:9.0f} samples/s", flush=True)
        print(f"(i) shardgan png, local files:          {r['local_sps']:9.0f} samples/s", flush=True)
        print(f"time to first batch after restore over http (warm): at 0% {r['restore_0_http_s']:.3f} s, "
              f"at 90% {r['restore_90_http_s']:.3f} s", flush=True)

    ratios = http_ratio_lines(r) if args.only_http else {**ratio_lines(r, workers), **http_ratio_lines(r)}
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in {**r, **ratios}.items()}, sort_keys=True))


def ratio_lines(r: dict, workers: int) -> dict[str, float | None]:
    """Print the ratios the issue sets targets for; return them for the JSON line."""
    fastest = max(FORMATS, key=lambda f: r[f"shardgan_{f}_sps"])
    ratios: dict[str, float | None] = {}
    for fmt in FORMATS:
        ours = r[f"shardgan_{fmt}_sps"]
        ratios[f"{fmt}_vs_wds"] = ours / r[f"wds_{fmt}_sps"]
        ratios[f"{fmt}_vs_workers_x_bound"] = ours / (workers * r[f"bound_{fmt}_sps"])
        lit = r[f"litdata_{fmt}_sps"]
        ratios[f"{fmt}_vs_litdata"] = None if lit is None else ours / lit
        print(f"[{fmt}] shardgan / plain webdataset = {ratios[f'{fmt}_vs_wds']:.2f}x (target >= 1.2); "
              f"/ ({workers} x bound) = {ratios[f'{fmt}_vs_workers_x_bound']:.2f} (target >= 0.8); "
              + ("litdata skipped" if lit is None else f"/ litdata = {ratios[f'{fmt}_vs_litdata']:.2f}x (target >= 1.0)"))
    ratios["fastest_vs_original"] = r[f"shardgan_{fastest}_sps"] / r["original_sps"]
    ratios["fastest_aug_vs_original"] = r[f"shardgan_{fastest}_aug_sps"] / r["original_sps"]
    ratios["restore_90_vs_0"] = r["restore_90_s"] / r["restore_0_s"]
    print(f"shardgan {fastest} / original pipeline = {ratios['fastest_vs_original']:.1f}x, with CPU augment "
          f"{ratios['fastest_aug_vs_original']:.1f}x (target >= 50)")
    print(f"restore at 90% / at 0% = {ratios['restore_90_vs_0']:.2f} (target <= 1.5)")
    return ratios


def http_ratio_lines(r: dict) -> dict[str, float]:
    ratios = {"http_cold_vs_wds_http": r["http_cold_sps"] / r["wds_http_sps"], "http_warm_vs_wds_http": r["http_warm_sps"] / r["wds_http_sps"],
              "http_warm_vs_local": r["http_warm_sps"] / r["local_sps"], "restore_90_vs_0_http": r["restore_90_http_s"] / r["restore_0_http_s"]}
    print(f"[http] shardgan cold cache / plain webdataset = {ratios['http_cold_vs_wds_http']:.2f}x, warm cache / plain webdataset = "
          f"{ratios['http_warm_vs_wds_http']:.2f}x, warm cache / local files = {ratios['http_warm_vs_local']:.2f}; "
          f"restore at 90% / at 0% = {ratios['restore_90_vs_0_http']:.2f}")
    return ratios


if __name__ == "__main__":
    main()
