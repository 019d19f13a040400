"""nvjpeg.decode_batch: data.decode_device=cuda's path, checked on the CPU (same decoder family)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import all_positions, corrupt_images, write_dataset
from shardgan.errors import CorruptSampleError
from shardgan.manifest import load_manifest
from shardgan.nvjpeg import decode_batch
from shardgan.reader import ShardReader
from shardgan.source import ShardSource


@pytest.mark.parametrize("channels,quality", [(3, 95), (3, 75), (1, 90)])
def test_jpeg_decoded_by_torchvision_equals_the_cpu_batch(tmp_path, channels, quality):
    """decode_batch is data.decode_device=cuda's path (nvjpeg there); on the CPU, torchvision's
    libjpeg-turbo gives the bits the threads' decoder gives, so the path is checked here."""
    manifest = write_dataset(tmp_path, "jpg", channels, quality)
    corrupt_images(tmp_path / "train-000001.tar", ["000000012"])
    reader = ShardReader(ShardSource(load_manifest(tmp_path), "train", None))
    positions = all_positions(manifest)[:20]
    out = np.zeros((20, *reader.shape), np.uint8)
    keys, corrupt = reader.read_batch(positions, out)
    images, gpu_keys, gpu_corrupt = decode_batch(reader, positions, torch.device("cpu"))
    assert gpu_keys == keys and [r.key for r in gpu_corrupt] == [r.key for r in corrupt] == ["000000012"]
    np.testing.assert_array_equal(images.permute(0, 2, 3, 1).numpy(), out)
    with pytest.raises(CorruptSampleError, match="000000012"):
        decode_batch(reader, positions, torch.device("cpu"), on_corrupt="fail")

