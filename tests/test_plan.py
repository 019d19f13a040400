"""The epoch plan as a pure function: coverage, equal batches, resume and elastic arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from shardgan.plan import RankPlan, epoch_order

SIZES = [7, 13, 1, 5, 20]
N = sum(SIZES)


def rank_positions(plan: RankPlan) -> list[list[int]]:
    """Positions (into the epoch order) of this rank's batches, in the order they are handed out."""
    return [plan.batch_indices(b).tolist() for b in range(plan.num_batches)]


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


@pytest.mark.parametrize("world_size,batch_size,nodes", [(1, 4, 1), (2, 3, 1), (8, 1, 1), (3, 5, 1), (2, 3, 2), (4, 2, 4), (6, 2, 3), (4, 3, 2)])
def test_ranks_cover_the_epoch_once(world_size, batch_size, nodes):
    plans = [RankPlan(0, 0, N, world_size, r, batch_size, nodes) for r in range(world_size)]
    assert len({p.num_batches for p in plans}) == 1
    used = [pos for p in plans for batch in rank_positions(p) for pos in batch]
    assert len(used) == len(set(used)) and set(used) <= set(range(N))
    assert N - len(used) < world_size * batch_size + nodes
    if nodes == 1:
        assert sorted(used) == list(range(len(used)))


def test_resume_positions_are_the_tail_of_the_uninterrupted_run():
    full = rank_positions(RankPlan(0, 0, N, 2, 1, 3))
    for k in range(len(full) + 1):
        resumed = rank_positions(RankPlan(0, k * 6, N, 2, 1, 3))
        assert resumed == full[k:]


def _used(world_size: int, batch_size: int, nodes: int, seen: int = 0, batches: int | None = None) -> list[int]:
    plans = [RankPlan(0, seen, N, world_size, r, batch_size, nodes) for r in range(world_size)]
    return [pos for p in plans for batch in rank_positions(p)[:batches] for pos in batch]


@pytest.mark.parametrize("nodes,before,after", [(1, (2, 3), (3, 2)), (6, (6, 1), (2, 3)), (6, (2, 3), (3, 4)), (2, (2, 2), (4, 3))])
def test_elastic_world_size_change_neither_repeats_nor_skips(nodes, before, after):
    """4 global batches at one (world, batch), the rest of the epoch at another; the canonical
    node count stays the run's, so the epoch's samples are those of an uninterrupted run."""
    first = _used(*before, nodes, batches=4)
    rest = _used(*after, nodes, seen=4 * before[0] * before[1])
    used = first + rest
    assert len(used) == len(set(used))
    assert set(first) | set(rest) <= set(range(N))
    assert N - len(used) < after[0] * after[1] + nodes
    seen, piece = 4 * before[0] * before[1], N // nodes
    assert set(first) == {c * piece + k for c in range(nodes) for k in range(seen // nodes)}  # every piece's head


def test_each_node_reads_only_its_pieces_in_contiguous_runs():
    """3 nodes of 2 ranks, C = 3: node n's ranks index only piece n, and each rank's batch is one
    run of consecutive positions, so it touches one or two shards."""
    sizes = [10] * 12
    n, world, batch = sum(sizes), 6, 4
    piece = n // 3
    for rank in range(world):
        plan = RankPlan(0, 0, n, world, rank, batch, 3)
        for b in range(plan.num_batches):
            indices = plan.batch_indices(b)
            assert set((indices // piece).tolist()) == {rank // 2}
            assert np.array_equal(indices, np.arange(indices[0], indices[0] + batch))


def test_canonical_nodes_must_divide_the_global_batch():
    with pytest.raises(ValueError, match="multiples of 4 canonical nodes"):
        RankPlan(0, 0, N, 3, 0, 1, 4)


@pytest.mark.parametrize("samples_seen", [0, 24])
def test_shard_sequence_is_the_shards_a_rank_reads_in_first_use_order(samples_seen):
    sizes = [7, 13, 5, 20, 9, 11]
    order = epoch_order(sizes, 3, 0)
    plan = RankPlan(0, samples_seen, sum(sizes), 4, 1, 3, canonical_nodes=2)
    read = [int(s) for b in range(plan.num_batches) for s in order[plan.batch_indices(b), 0]]
    assert plan.shard_sequence(order) == list(dict.fromkeys(read))
