"""FFCV, the loading-speed peer of tools/bench_loader.py: whole-epoch samples/s of ffcv.loader.Loader.

FFCV 1.0.2 needs numpy<2, so this runs in its own venv (`make ffcv-venv`, which borrows
.venv's torch) and imports nothing from shardgan. It writes the frames once as a .beton
(one RGBImageField, raw or jpg, plus an IntField index), runs an untimed warm-up epoch
(numba compiles the pipeline), then --epochs timed epochs, then one more epoch that checks
every decoded image against frames[index] (raw: exact; jpg: mean abs error < 8).
The last line printed is one JSON object.

    .venv-ffcv/bin/python tools/ffcv_peer.py --frames FRAMES.npy --format raw|jpg --quality 90 \\
        --work DIR --batch-size 64 --threads 2 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from ffcv.fields import IntField, RGBImageField
from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import ToTensor
from ffcv.writer import DatasetWriter

JPG_MAX_MEAN_ABS_ERROR = 8.0


class Frames:
    """What DatasetWriter.from_indexed_dataset reads: (image, index) per sample."""

    def __init__(self, path: Path):
        self.frames = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        return np.ascontiguousarray(self.frames[i]), i


def write_beton(frames: Path, fmt: str, quality: int, work: Path, threads: int) -> Path:
    """The .beton for these frames, format and quality; written only when its key changed."""
    stat = frames.stat()
    key = {"frames": str(frames.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "format": fmt, "quality": quality}
    beton, key_file = work / f"{fmt}_q{quality}.beton", work / f"{fmt}_q{quality}.json"
    if beton.exists() and key_file.exists() and json.loads(key_file.read_text()) == key:
        print(f"reusing {beton}", flush=True)
        return beton
    work.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    image = RGBImageField(write_mode="raw") if fmt == "raw" else RGBImageField(write_mode="jpg", jpeg_quality=quality)
    start = time.perf_counter()
    DatasetWriter(str(beton), {"image": image, "index": IntField()}, num_workers=threads).from_indexed_dataset(Frames(frames))
    print(f"wrote {beton} ({beton.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s", flush=True)
    key_file.write_text(json.dumps(key))
    return beton


def epoch(loader: Loader) -> tuple[float, int]:
    """Samples/s over one whole epoch, from creating the iterator to the last batch."""
    start, count = time.perf_counter(), 0
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - start), count


def check(loader: Loader, frames: np.ndarray, fmt: str) -> tuple[int, float]:
    """Every decoded image of one epoch against frames[index]: how many, and the worst batch's mean abs error."""
    checked, worst = 0, 0.0
    for images, index in loader:
        got, want = images.numpy(), frames[index.numpy().reshape(-1)]
        if fmt == "raw":
            if not np.array_equal(got, want):
                sys.exit(f"raw images differ from the frames at batch starting with index {int(index[0])}")
        else:
            worst = max(worst, float(np.abs(got.astype(np.int16) - want.astype(np.int16)).mean()))
            if worst >= JPG_MAX_MEAN_ABS_ERROR:
                sys.exit(f"jpg mean abs error {worst:.2f} >= {JPG_MAX_MEAN_ABS_ERROR:g} (wrong decode, or frames too noisy for JPEG)")
        checked += len(got)
    return checked, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=Path, required=True, help="uint8 array (N, H, W, 3) saved with np.save")
    parser.add_argument("--format", choices=("raw", "jpg"), required=True)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (jpg only)")
    parser.add_argument("--work", type=Path, required=True, help="where the .beton files are kept")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="writer processes and loader threads")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up epoch")
    args = parser.parse_args()

    beton = write_beton(args.frames, args.format, args.quality, args.work, args.threads)
    loader = Loader(str(beton), batch_size=args.batch_size, num_workers=args.threads, order=OrderOption.RANDOM,
                    drop_last=True, os_cache=True,
                    pipelines={"image": [SimpleRGBImageDecoder(), ToTensor()], "index": [IntDecoder(), ToTensor()]})
    first, samples = epoch(loader)
    print(f"FFCV {args.format}: warm-up epoch {first:,.0f} samples/s ({samples} samples, batch {args.batch_size}, {args.threads} threads)", flush=True)
    rates = []
    for n in range(args.epochs):
        rate, samples = epoch(loader)
        rates.append(rate)
        print(f"FFCV {args.format}: epoch {n + 1} {rate:,.0f} samples/s", flush=True)
    frames = np.load(args.frames, mmap_mode="r")
    checked, worst = check(loader, frames, args.format)
    print(f"FFCV {args.format}: {checked} decoded images match the frames ({'exactly' if args.format == 'raw' else f'worst batch mean abs error {worst:.2f} < {JPG_MAX_MEAN_ABS_ERROR:g}'})")
    print(f"FFCV {args.format}: median {statistics.median(rates):,.0f} samples/s over {len(rates)} epochs")
    print(json.dumps({"format": args.format, "samples": samples, "first_epoch": first, "epochs": rates,
                      "median": statistics.median(rates), "ffcv": version("ffcv")}))


if __name__ == "__main__":
    main()
