"""The epoch plan as a pure function: coverage, equal batches, resume and elastic arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from shardgan.plan import RankPlan, epoch_order

SIZES = [7, 13, 1, 5, 20]
N = sum(SIZES)


def rank_positions(plan: RankPlan) -> list[list[int]]:
    """Positions (into the epoch order) of this rank's batches, in the order they are handed out."""
    return [list(range(plan.batch_slice(b).start, plan.batch_slice(b).stop)) for b in range(plan.num_batches)]


def test_epoch_order_is_a_permutation_with_shards_contiguous():
    order = epoch_order(SIZES, seed=3, epoch=0)
    assert sorted(map(tuple, order.tolist())) == [(s, i) for s, n in enumerate(SIZES) for i in range(n)]
    shard_runs = [s for k, s in enumerate(order[:, 0].tolist()) if k == 0 or s != order[k - 1, 0]]
    assert sorted(shard_runs) == list(range(len(SIZES)))  # each shard read in one run


def test_epoch_order_changes_per_epoch_and_repeats_per_seed():
    a0, a1 = epoch_order(SIZES, 0, 0), epoch_order(SIZES, 0, 1)
    assert not np.array_equal(a0, a1)
    assert np.array_equal(a0, epoch_order(SIZES, 0, 0))
    assert not np.array_equal(a0, epoch_order(SIZES, 1, 0))


@pytest.mark.parametrize("world_size,batch_size", [(1, 4), (2, 3), (8, 1), (3, 5)])
def test_ranks_cover_the_epoch_once(world_size, batch_size):
    plans = [RankPlan(0, 0, N, world_size, r, batch_size) for r in range(world_size)]
    assert len({p.num_batches for p in plans}) == 1
    used = [pos for p in plans for batch in rank_positions(p) for pos in batch]
    assert len(used) == len(set(used))
    assert sorted(used) == list(range(len(used)))
    assert N - len(used) < world_size * batch_size


def test_resume_positions_are_the_tail_of_the_uninterrupted_run():
    full = rank_positions(RankPlan(0, 0, N, 2, 1, 3))
    for k in range(len(full) + 1):
        resumed = rank_positions(RankPlan(0, k * 6, N, 2, 1, 3))
        assert resumed == full[k:]


def test_elastic_world_size_change_neither_repeats_nor_skips():
    seen = 4 * (2 * 3)  # 4 global batches at world 2, batch 3
    before = list(range(seen))
    after = [pos for r in range(3) for b in rank_positions(RankPlan(0, seen, N, 3, r, 2)) for pos in b]
    used = sorted(before + after)
    assert used == list(range(len(used)))
    assert N - len(used) < 3 * 2
