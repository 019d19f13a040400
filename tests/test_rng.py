"""Randomness: derived generators that never share a state, and global RNG states that, captured
and restored, give the same next draws."""

from __future__ import annotations

import random

import numpy as np
import torch

from shardgan.rng import AUGMENT, DIFF_AUGMENT, FIXED_NOISE, NOISE, STATS_NOISE, capture_global_states, derived_generator, restore_global_states

STREAMS = (NOISE, AUGMENT, FIXED_NOISE, DIFF_AUGMENT, STATS_NOISE)


def test_derived_generators_never_share_a_state_and_depend_on_nothing_else() -> None:
    keys = [(seed, rank, step, stream) for seed in (0, 1) for rank in range(16) for step in range(4) for stream in STREAMS]
    seeds = {derived_generator(*key).initial_seed() for key in keys}
    assert len(seeds) == len(keys)
    torch.manual_seed(7)  # the global state plays no part
    a = torch.randn(5, generator=derived_generator(3, 1, 2, NOISE))
    torch.manual_seed(8)
    assert torch.equal(a, torch.randn(5, generator=derived_generator(3, 1, 2, NOISE)))


def test_global_states_captured_then_restored_give_the_same_next_draws() -> None:
    state = capture_global_states(torch.device("cpu"))
    draws = (torch.rand(3), np.random.rand(3), random.random())
    restore_global_states(state, torch.device("cpu"))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
    assert state["cuda"] is None  # a CPU process has no CUDA state to save
