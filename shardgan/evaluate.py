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
from .config import Config, DataConfig
from .configfile import config_from_dict
from .generate import Chosen, choose_checkpoint, generate_images, generator_from_state
from .reader import sample_images
from .fidelity import FidKid, SlicedWasserstein, diversity, inception_features, mean_pairwise_distance
from .rundir import RunDir, append_metrics
from .source import split_location

log = logging.getLogger("shardgan")


def load_real_images(data: DataConfig, num_images: int) -> torch.Tensor:
    """Up to `num_images` held-out frames (the `val` split) as uint8 (N, C, H, W), local or remote."""
    return sample_images(data, "val", num_images, seed=0)


@dataclass
class Evaluator:
    """The real side, computed once per run: SWD descriptors and, with weights, Inception features,
    on the training device (where G runs)."""

    swd: SlicedWasserstein
    real_distance: torch.Tensor
    """The val images' mean pairwise distance (fidelity.mean_pairwise_distance): diversity's reference."""
    num_images: int
    nz: int
    device: torch.device
    fid_kid: FidKid | None = None

    @classmethod
    def build(cls, cfg: Config, device: torch.device) -> Evaluator:
        real = load_real_images(cfg.data, cfg.eval.num_images)
        if len(real) < cfg.eval.num_images:
            log.warning(
                "the val split (%s) has %d images, fewer than eval.num_images=%d: comparing %d real with %d generated",
                split_location(cfg.data, "val"), len(real), cfg.eval.num_images, len(real), len(real),
            )  # fmt: skip
        fid_kid = FidKid(inception_features(cfg.eval.fid_weights), real, device) if cfg.eval.fid_weights else None
        swd = SlicedWasserstein.with_mode(real, cfg.eval.swd_mode, device=device)
        return cls(swd=swd, real_distance=mean_pairwise_distance(real), num_images=len(real), nz=cfg.model.nz, device=device, fid_kid=fid_kid)

    def __call__(self, generator: nn.Module) -> dict[str, Any]:
        """SWD and diversity (the samples' mean pairwise distance over the val images') of
        `num_images` samples from fixed latents (the same every call), FID/KID with weights."""
        fake = generate_images(generator, self.num_images, self.nz, self.device)
        scores = {**self.swd(fake), "diversity": round(diversity(fake, self.real_distance).item(), 4)}
        if self.fid_kid is not None:
            scores.update(self.fid_kid(fake))
        return scores


def evaluate_run(
    run_root: str | Path, checkpoint: Path | None = None, overrides: list[str] | None = None, *, best: bool = False
) -> tuple[Chosen, dict[str, Any]]:
    """`shardgan eval`: score a run's checkpoint (default: its newest valid one, or with `best` the
    lowest-SWD one) against its val split; `overrides` (section.key=value) change eval settings or
    point data.shards elsewhere. The scores are also appended to the run's eval.jsonl.
    Returns the checkpoint used (with the SWD training logged for it) and the scores."""
    run = RunDir(Path(run_root))
    state, chosen = choose_checkpoint(run, checkpoint, best)
    cfg = config_from_dict(state[ckpt.CONFIG], str(chosen.used.path), overrides)
    device = torch.device("cpu")
    scores = {"step": state[ckpt.STEP], "checkpoint": str(chosen.used.path), **Evaluator.build(cfg, device)(generator_from_state(state))}
    append_metrics(run.eval_metrics, scores)
    return chosen, scores
