"""Score several runs' generators with the same SWD settings, in one process, against one val set.

The demo's before/after numbers (docs/demo_tuning.md) come from this script: every run's
checkpoint (newest, `--best`, or `--step N`) generates `--num-fakes` images (by default as many
as the `--num-images` val frames) from the same latents, and each SWD mode scores them against
the same val frames with the same patches and projections, so the numbers compare even when the
runs logged SWD with other settings. More fakes than val frames cut the generator side's noise:
256 fakes of one checkpoint, drawn eight times, spread +-8-12 (docs/demo_tuning.md, part 5).
Each row also gives the samples' diversity against the same val frames (the collapse
watchdog's measure).

    python tools/compare_swd.py runs/baseline runs/demo --shards data/demo_shards --num-fakes 2048
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from shardgan import checkpoint as ckpt
from shardgan.config import DataConfig
from shardgan.evaluate import load_real_images
from shardgan.generate import generate_images, generator_from_state
from shardgan.fidelity import SWD_MODES, SlicedWasserstein, diversity


def pick_checkpoint(run: Path, step: int | None, best: bool) -> Path:
    if best:
        return ckpt.list_checkpoints(run / "checkpoints" / "best")[0]
    if step is not None:
        return run / "checkpoints" / ckpt.checkpoint_name(step)
    return ckpt.list_checkpoints(run / "checkpoints")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--shards", default="data/demo_shards")
    parser.add_argument("--num-images", type=int, default=256, help="val frames (the real side)")
    parser.add_argument("--num-fakes", type=int, default=0, help="generated images per run (default: as many as the val frames)")
    parser.add_argument("--modes", default=",".join(SWD_MODES), help="comma-separated eval.swd_mode values")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--best", action="store_true", help="the run's checkpoints/best/ instead")
    args = parser.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    real = load_real_images(DataConfig(shards=args.shards), args.num_images)
    metrics = {mode: SlicedWasserstein.with_mode(real, mode) for mode in args.modes.split(",")}
    rows = []
    for run in args.runs:
        path = pick_checkpoint(run, args.step, args.best)
        state = ckpt.load_file(path)
        generator = generator_from_state(state)
        fake = generate_images(generator, args.num_fakes or len(real), generator.main[0].in_channels, torch.device("cpu"))
        row = {"run": str(run), "step": state[ckpt.STEP], "num_fakes": len(fake), **{f"swd_{mode}": m(fake)["swd"] for mode, m in metrics.items()}}
        row["diversity"] = round(diversity(fake, real).item(), 4)  # the collapse watchdog's measure
        rows.append(row)
        print(json.dumps(row), flush=True)
    first = rows[0]
    for row in rows[1:]:
        ratios = {mode: round(row[f"swd_{mode}"] / first[f"swd_{mode}"], 3) for mode in metrics}
        print(f"{row['run']} / {first['run']}: {ratios}")


if __name__ == "__main__":
    main()
