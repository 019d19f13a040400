"""A real 2-process torchrun (gloo): equal step counts and disjoint data on every rank."""

from __future__ import annotations

import pytest

from .conftest import build_dataset
from .loader_runs import run_torchrun

pytestmark = pytest.mark.multiproc  # every test here starts Python processes


@pytest.mark.slow
def test_torchrun_ranks_take_equal_steps_and_disjoint_samples(tmp_path):
    sizes = [11, 4, 17, 9]  # unequal shards, 41 samples, global batch 6
    build_dataset(tmp_path / "shards", sizes)
    reports = run_torchrun(tmp_path / "shards", tmp_path)
    assert [r["rank"] for r in reports] == [0, 1] and {r["world_size"] for r in reports} == {2}
    assert reports[0]["steps"] == reports[1]["steps"] == sum(sizes) // 6
    per_rank = [{k for batch in r["keys"] for k in batch} for r in reports]
    assert not per_rank[0] & per_rank[1]
    assert len(per_rank[0]) + len(per_rank[1]) == 6 * (sum(sizes) // 6)
