"""Randomness, derived or saved: every random draw of a step comes from a generator derived from
(train.seed, rank, step, stream), so no draw depends on history; what is not derived (the global
RNG states of torch, CUDA, numpy and random) is captured into each checkpoint and restored."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

NOISE, AUGMENT, FIXED_NOISE, DIFF_AUGMENT, STATS_NOISE = 0, 1, 2, 3, 4
"""Streams of the derived generators: per-step latent noise, per-step augmentation of the reals,
the fixed sample noise (drawn once, as rank 0 at step 0), per-step augmentation in front of D,
the noise the EMA generator's BatchNorm statistics are computed from (drawn once)."""


def derived_generator(seed: int, rank: int, step: int, stream: int, *, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of (train.seed, rank, step, stream). On the training device, so per-step
    draws need no host-to-device copies.

    Always the full key: SeedSequence pads a short key with zeros, so (seed, 2) would be the
    state of (seed, rank 2, step 0, NOISE); with four words, streams never share a state."""
    state = np.random.SeedSequence([seed, rank, step, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state >> np.uint64(1)))


def capture_global_states(device: torch.device) -> dict[str, Any]:
    """This process's global RNG states (torch, CUDA, numpy, random) as weights_only-safe values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def restore_global_states(state: dict[str, Any], device: torch.device) -> None:
    """Undo `capture_global_states`: the next draws are the ones that followed the capture."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
