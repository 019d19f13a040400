"""`shardgan` command line: parse, call one library function, turn ShardganError into one line.

Each command imports its library module when it runs, not at the top: `shardgan --help`, a
usage error or `import-ini` then answer without importing torch (seconds on a cold start).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .command import add_train_command, new_app, run_app
from .errors import ConfigError

app = new_app()


@app.command("import-ini")
def import_ini_cmd(
    ini: Path = typer.Argument(..., help="The original project's model_config.ini"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the TOML here (default: stdout)"),
) -> None:
    """Convert the original project's INI config ([CONFIGS] section) into a shardgan TOML config."""
    from .atomic import write_bytes_atomic
    from .configfile import to_toml
    from .ini import import_ini

    text = to_toml(import_ini(ini))
    if out is None:
        typer.echo(text)
    else:
        write_bytes_atomic(out, text.encode())
        typer.echo(f"wrote {out}")


@app.command("pack")
def pack_cmd(
    src: Path = typer.Argument(..., help="Folder of frames (png/jpg/jpeg/bmp/webp) and/or videos (mp4/mkv/avi/webm), searched recursively"),
    dst: Path = typer.Argument(..., help="Output folder for the shards and manifest.json"),
    size: str = typer.Option("64x64", "--size", help="Stored frame size WIDTHxHEIGHT, e.g. 88x66; 88xauto: the height from the frames' aspect ratio"),
    mode: str = typer.Option("stretch", "--mode", help="stretch | crop (fill, cut centre) | pad (fit, black borders)"),
    channels: int = typer.Option(3, "--channels", help="3 (RGB) or 1 (grayscale)"),
    image_format: str = typer.Option("raw", "--format", help="raw (uncompressed .npy, the fastest to load) | png | jpg | webp: see the README"),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="jpg/webp quality (webp: 100 = lossless)"),
    chroma: Optional[str] = typer.Option(None, "--chroma", help="jpg chroma subsampling: 444 | 420 (faster to decode; default: 444 at quality >= 90)"),
    shard_size: str = typer.Option("256MB", "--shard-size", help="Target shard size, e.g. 256MB, 1GiB"),
    samples_per_shard: Optional[int] = typer.Option(None, "--samples-per-shard", min=1, help="Cut shards by sample count instead"),
    val: str = typer.Option("0", "--val", help="Held-out split: a count (500) or a fraction (0.05)"),
    seed: int = typer.Option(0, "--seed", help="Seed of the global shuffle and the val split"),
    every: int = typer.Option(1, "--every", min=1, help="Videos: keep every k-th frame"),
    blank_threshold: float = typer.Option(2.0, "--blank-threshold", min=0, help="Drop frames whose pixel std is below this (0 keeps all)"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Encoding processes (default: all cores)"),
    part: Optional[str] = typer.Option(None, "--part", help="I/N: encode only part I of N (SLURM arrays); then run --merge"),
    merge: bool = typer.Option(False, "--merge", metavar="", help="Write shards + manifest from the encoded parts"),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace a different dataset already in DST"),
    keep_work: bool = typer.Option(False, "--keep-work", metavar="", help="Keep DST/.work (encoded chunks) after packing"),
    progress_every: float = typer.Option(60.0, "--progress-every", min=0, help="Off a terminal (a job log): a progress line every this many seconds (0: none)"),
) -> None:
    """Pack frames into resized, shuffled WebDataset shards + manifest (resumable, deterministic)."""
    from .chunks import EncodeOptions
    from .config import parse_bytes
    from .cut import CutOptions
    from .frames import FrameSpec
    from .pack import PackOptions, pack_dataset, resolve_size

    width, height = resolve_size(src, *parse_frame_size(size))
    val_samples, shard_size_bytes = parse_val(val), parse_bytes(shard_size, "--shard-size")
    options = PackOptions(
        EncodeOptions(FrameSpec(width, height, channels, mode, every), image_format, quality, blank_threshold, chroma),
        CutOptions(seed, val_samples, samples_per_shard, shard_size_bytes),
    )
    pack_dataset(
        src, dst, options, workers=workers, part=parse_part(part) if part else None,
        merge=merge, overwrite=overwrite, keep_work=keep_work, progress_every_s=progress_every,
    )  # fmt: skip


def parse_frame_size(text: str) -> tuple[int | None, int | None]:
    """--size '88x66' -> (88, 66); one side may be auto: '88xauto' -> (88, None), 'autox66' -> (None, 66),
    that side then follows the frames' aspect ratio (pack.resolve_size)."""
    match = re.fullmatch(r"\s*(\d+|auto)\s*[xX]\s*(\d+|auto)\s*", text)
    sides = [None if side == "auto" else int(side) for side in match.groups()] if match else []
    if not sides or sides == [None, None] or min(s for s in sides if s is not None) < 1:
        raise ConfigError(f"--size must be WIDTHxHEIGHT with positive integers, e.g. 88x66, or one side auto (88xauto: the height from the frames' aspect ratio); got {text!r}")
    return sides[0], sides[1]


def parse_val(text: str) -> float:
    """--val '500' -> 500 samples, '0.05' -> 5 percent, '0' -> none: a number written with a point or an
    exponent is a fraction, which must lie in (0, 1) ('1.0' is refused, not read as one sample)."""
    usage = "--val must be a sample count (e.g. 500) or a fraction in (0, 1) (e.g. 0.05)"
    if re.fullmatch(r"\s*\d+\s*", text):
        return float(int(text))
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{usage}; got {text!r}") from None
    if not 0 < value < 1:
        raise ConfigError(f"{usage}; got {text!r}, a fraction {'of all samples' if value == 1 else 'outside (0, 1)'}")
    return value


def parse_part(text: str) -> tuple[int, int]:
    """--part '3/8' -> (3, 8): this job encodes chunks 3, 11, 19, ... of 8 parts."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ConfigError(f"--part must be I/N with 0 <= I < N, e.g. 0/4 (like $SLURM_ARRAY_TASK_ID/4); got {text!r}")
    return int(match[1]), int(match[2])


@app.command("inspect")
def inspect_cmd(
    dst: Path = typer.Argument(..., help="A packed dataset folder (or its manifest.json)"),
    verify: bool = typer.Option(False, "--verify", metavar="", help="Re-check every shard's sha256 and decode every sample"),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Write a contact sheet of random train samples here"),
    grid_count: int = typer.Option(64, "--grid-count", min=1, help="Samples on the contact sheet"),
    seed: int = typer.Option(0, "--seed", help="Which random samples go on the contact sheet"),
) -> None:
    """Summarise a packed dataset; --verify checks every byte, --grid shows samples."""
    from .inspection import inspect_dataset

    inspect_dataset(dst, verify=verify, grid=grid, grid_count=grid_count, seed=seed)


def _launch(*args: Any, **kwargs: Any) -> int:
    """train.launch, imported when the command runs (so `shardgan --help` needs no torch)."""
    from .train import launch

    return launch(*args, **kwargs)


add_train_command(app, _launch)


@app.command("generate")
def generate_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/GC7M"),
    num_images: int = typer.Option(64, "--num", "-n", min=1, help="Number of images"),
    seed: int = typer.Option(0, "--seed", help="Latent seed: same seed, same images"),
    grid: bool = typer.Option(True, "--grid/--separate", metavar="", help="One grid PNG or one PNG per image"),
    interpolate: int = typer.Option(0, "--interpolate", min=0, help="Write an N-image latent walk strip instead (0: off)"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint file (default: newest valid)"),
    best: bool = typer.Option(False, "--best", metavar="", help="Use the run's best-SWD checkpoint instead of the newest"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: RUN_DIR/generated)"),
) -> None:
    """Write images from a run's EMA generator; says which checkpoint, with the SWD training logged for it."""
    from .generate import generate

    chosen, paths = generate(run_dir, num_images=num_images, seed=seed, grid=grid, interpolate=interpolate, checkpoint=checkpoint, out=out, best=best)
    typer.echo(chosen.describe())
    for path in paths:
        typer.echo(f"wrote {path} (generator of step {chosen.used.step})")


@app.command("eval")
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/demo"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint file (default: newest valid)"),
    best: bool = typer.Option(False, "--best", metavar="", help="Score the run's best-SWD checkpoint instead of the newest"),
    num_images: Optional[int] = typer.Option(None, "--num-images", "-n", min=2, help="Real and generated images compared (default: eval.num_images)"),
    fid_weights: Optional[Path] = typer.Option(None, "--fid-weights", help="torchvision inception_v3 state_dict file: adds FID and KID"),
    shards: Optional[str] = typer.Option(None, "--shards", help="Dataset with the val split (default: the run's data.shards)"),
) -> None:
    """Score a checkpoint's generator against the val split: SWD and diversity (and FID/KID with --fid-weights) as one
    JSON line on stdout, appended to RUN_DIR/eval.jsonl; stderr says which checkpoint, with the SWD training logged for it."""
    from .evaluate import evaluate_run

    overrides = [f"eval.num_images={num_images}"] if num_images is not None else []
    overrides += [f"eval.fid_weights={fid_weights}"] if fid_weights else []
    overrides += [f"data.shards={shards}"] if shards else []
    chosen, scores = evaluate_run(run_dir, checkpoint, overrides, best=best)
    typer.echo(chosen.describe(), err=True)
    typer.echo(json.dumps(scores))


def main(argv: list[str] | None = None) -> int:
    """Entry of `shardgan` and `python -m shardgan`: one line and an exit code per error (command.run_app)."""
    return run_app(app, argv)


if __name__ == "__main__":
    sys.exit(main())
