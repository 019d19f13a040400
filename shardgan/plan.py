"""The epoch plan: which sample every rank and worker reads, as a pure function.

The global order of an epoch depends only on (shard sizes, seed, epoch): shards
are shuffled, then the samples inside each shard. It does not depend on world
size or worker count (as in MosaicML streaming), so a position is one number,
`samples_seen`, and a run can resume with another world size or worker count.

Global batch g covers order[g*B*W : (g+1)*B*W]; rank r takes the r-th slice of B.
Every rank therefore gets exactly the same number of batches, however unequal the
shards, and the only samples left out are a remainder smaller than one global batch.
Which reading process fills a batch does not matter: its content depends only on its number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def epoch_order(shard_sizes: Sequence[int], seed: int, epoch: int) -> np.ndarray:
    """(N, 2) int64 array of (shard index, sample index in shard): the epoch's global order."""
    rng = np.random.default_rng([seed, epoch])
    parts = []
    for shard in rng.permutation(len(shard_sizes)):
        n = shard_sizes[shard]
        part = np.empty((n, 2), dtype=np.int64)
        part[:, 0] = shard
        part[:, 1] = rng.permutation(n)
        parts.append(part)
    return np.concatenate(parts) if parts else np.empty((0, 2), dtype=np.int64)


@dataclass(frozen=True)
class RankPlan:
    """What one rank reads in one epoch, from `samples_seen` on."""

    epoch: int
    samples_seen: int
    """Global samples already consumed in this epoch before this plan starts."""
    num_samples: int
    world_size: int
    rank: int
    batch_size: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def num_batches(self) -> int:
        """Batches this rank yields from `samples_seen` to the end of the epoch (same on every rank)."""
        return max(0, self.num_samples - self.samples_seen) // self.global_batch

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def batch_slice(self, batch: int) -> slice:
        """Positions in the epoch order of this rank's `batch`-th batch (counted from samples_seen)."""
        start = self.samples_seen + batch * self.global_batch + self.rank * self.batch_size
        return slice(start, start + self.batch_size)
