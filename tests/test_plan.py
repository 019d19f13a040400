"""The epoch plan as a pure function: coverage, equal batches, resume and elastic arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from shardgan.plan import RankPlan, epoch_order

SIZES = [7, 13, 1, 5, 20]
N = sum(SIZES)


def rank_positions(plan: RankPlan, num_workers: int) -> list[list[int]]:
    """Positions (into the epoch order) of this rank's batches, in the order the DataLoader yields them."""
    per_worker = [[plan.batch_slice(b) for b in plan.worker_batches(w, num_workers)] for w in range(max(1, num_workers))]
    out = []
    for i in range(plan.num_batches):
        s = per_worker[i % len(per_worker)][i // len(per_worker)]
        out.append(list(range(s.start, s.stop)))
    return out


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


@pytest.mark.parametrize("world_size,batch_size,num_workers", [(1, 4, 0), (2, 3, 2), (8, 1, 4), (3, 5, 3)])
def test_ranks_and_workers_cover_the_epoch_once(world_size, batch_size, num_workers):
    plans = [RankPlan(0, 0, N, world_size, r, batch_size) for r in range(world_size)]
    assert len({p.num_batches for p in plans}) == 1
    used = [pos for p in plans for batch in rank_positions(p, num_workers) for pos in batch]
    assert len(used) == len(set(used))
    assert sorted(used) == list(range(len(used)))
    assert N - len(used) < world_size * batch_size


def test_resume_positions_are_the_tail_of_the_uninterrupted_run():
    full = rank_positions(RankPlan(0, 0, N, 2, 1, 3), num_workers=2)
    for k in range(len(full) + 1):
        resumed = rank_positions(RankPlan(0, k * 6, N, 2, 1, 3), num_workers=3)
        assert resumed == full[k:]


def test_elastic_world_size_change_neither_repeats_nor_skips():
    seen = 4 * (2 * 3)  # 4 global batches at world 2, batch 3
    before = list(range(seen))
    after = [pos for r in range(3) for b in rank_positions(RankPlan(0, seen, N, 3, r, 2), 1) for pos in b]
    used = sorted(before + after)
    assert used == list(range(len(used)))
    assert N - len(used) < 3 * 2
