"""User errors: exit codes by kind, and a corrupt-sample error that survives a DataLoader worker."""

from __future__ import annotations

import pickle

from shardgan.errors import (
    CheckpointError,
    ConfigError,
    CorruptSampleError,
    DataError,
    Interrupted,
    NonFiniteLossError,
    ShardganError,
)


def test_every_error_is_a_shardgan_error_with_its_exit_code() -> None:
    codes = {cls: cls("x").exit_code for cls in (ConfigError, DataError, CheckpointError, NonFiniteLossError, Interrupted)}
    assert all(issubclass(cls, ShardganError) for cls in codes)
    assert codes == {ConfigError: 2, DataError: 2, CheckpointError: 2, NonFiniteLossError: 3, Interrupted: 130}


def test_corrupt_sample_error_names_the_sample_and_pickles_with_its_fields() -> None:
    error = CorruptSampleError("train-000003.tar", "000000042", "bad tar header checksum")
    assert isinstance(error, DataError)
    assert str(error) == "corrupt sample '000000042' in train-000003.tar: bad tar header checksum"
    copy = pickle.loads(pickle.dumps(error))  # how it leaves a DataLoader worker
    assert (copy.shard, copy.key, copy.reason, str(copy)) == (error.shard, error.key, error.reason, str(error))
