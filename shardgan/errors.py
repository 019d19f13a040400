"""User-facing errors. The CLI prints `str(err)` as one line and exits non-zero; no traceback."""

from __future__ import annotations


class ShardganError(Exception):
    """A problem the user can fix: bad argument, bad input, bad config, missing file."""

    exit_code = 2


class ConfigError(ShardganError):
    """Unknown key, wrong type or impossible value in a config or override."""


class DataError(ShardganError):
    """Missing/corrupt shard, incompatible manifest, dataset too small for a batch."""


class CorruptSampleError(DataError):
    """A sample that cannot be decoded; carries where it lives so reports name it."""

    def __init__(self, shard: str, key: str, reason: str):
        super().__init__(f"corrupt sample {key!r} in {shard}: {reason}")
        self.shard, self.key, self.reason = shard, key, reason

    def __reduce__(self):  # rebuilt from its fields, so it survives pickling out of a DataLoader worker
        return (type(self), (self.shard, self.key, self.reason))


class CheckpointError(ShardganError):
    """No usable checkpoint, or a resume that would change what exactness depends on."""


class NonFiniteLossError(ShardganError):
    """Training produced NaN/inf; the last good checkpoint stays in place."""

    exit_code = 3


class Interrupted(ShardganError):
    """Ctrl-C: what was finished is kept, and the same command goes on from there."""

    exit_code = 130
