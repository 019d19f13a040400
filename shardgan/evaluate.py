"""A generator against the val split: the per-run `Evaluator` training logs SWD with, and
`shardgan eval` (`evaluate_run`), which scores a run's checkpoint the same way."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import Config, DataConfig, config_from_dict
from .errors import CheckpointError
from .generate import generate_images, generator_from_state
from .reader import sample_images
from .quality import FidKid, SlicedWasserstein, inception_features
from .rundir import RunDir, append_metrics

log = logging.getLogger("shardgan")


def load_real_images(data: DataConfig, num_images: int) -> torch.Tensor:
    """Up to `num_images` held-out frames (the `val` split) as uint8 (N, C, H, W), local or remote."""
    return sample_images(data, "val", num_images, seed=0)


@dataclass
class Evaluator:
    """The real side, computed once per run: SWD descriptors and, with weights, Inception features,
    on the training device (where G runs)."""

    swd: SlicedWasserstein
    num_images: int
    nz: int
    device: torch.device
    fid_kid: FidKid | None = None

    @classmethod
    def build(cls, cfg: Config, device: torch.device) -> Evaluator:
        real = load_real_images(cfg.data, cfg.eval.num_images)
        if len(real) < cfg.eval.num_images:
            log.warning(
                "the val split of %s has %d images, fewer than eval.num_images=%d: comparing %d real with %d generated",
                cfg.data.shards, len(real), cfg.eval.num_images, len(real), len(real),
            )  # fmt: skip
        fid_kid = FidKid(inception_features(cfg.eval.fid_weights), real, device) if cfg.eval.fid_weights else None
        return cls(swd=SlicedWasserstein.with_mode(real, cfg.eval.swd_mode, device=device), num_images=len(real), nz=cfg.model.nz, device=device, fid_kid=fid_kid)

    def __call__(self, generator: nn.Module) -> dict[str, Any]:
        fake = generate_images(generator, self.num_images, self.nz, self.device)
        scores = self.swd(fake)
        if self.fid_kid is not None:
            scores.update(self.fid_kid(fake))
        return scores


def evaluate_run(run_root: str | Path, checkpoint: Path | None = None, overrides: list[str] | None = None, *, best: bool = False) -> dict[str, Any]:
    """`shardgan eval`: score a run's checkpoint (default: its newest valid one, or with `best` the
    lowest-SWD one) against its val split; `overrides` (section.key=value) change eval settings or
    point data.shards elsewhere. The scores are also appended to the run's eval.jsonl."""
    run = RunDir(Path(run_root))
    if not run.root.is_dir():
        raise CheckpointError(f"run directory not found: {run.root}")
    state, checkpoint = ckpt.load_given_or_newest(run.best_checkpoints if best else run.checkpoints, checkpoint)
    cfg = config_from_dict(state[ckpt.CONFIG], str(checkpoint), overrides)
    device = torch.device("cpu")
    scores = {"step": state[ckpt.STEP], "checkpoint": str(checkpoint), **Evaluator.build(cfg, device)(generator_from_state(state))}
    append_metrics(run.eval_metrics, scores)
    return scores
