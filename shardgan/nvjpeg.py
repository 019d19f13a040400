"""data.decode_device=cuda: JPEG batches decoded on the training GPU by nvjpeg.

The training thread only reads each sample's bytes (`ShardReader.encoded`); torchvision's
`decode_jpeg(..., device="cuda")` decodes the whole batch in one call. A corrupt sample is
found by one call per sample when the batched call fails, and skipped in step like the CPU
path's (its slot filled with a good sample of the batch). nvjpeg's pixels differ slightly from
libjpeg-turbo's, so changing the decode device on resume is "applied", not exact.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from .errors import CorruptSampleError
from .reader import CorruptReport, ShardReader, fill_from_good


def decode_batch(reader: ShardReader, positions: np.ndarray, device: torch.device, on_corrupt: str = "skip") -> tuple[torch.Tensor, list[str], list[CorruptReport]]:
    """The JPEG samples at `positions` decoded on `device` by torchvision (nvjpeg on CUDA):
    (B, C, H, W) uint8 there, keys, corrupt samples (handled as in `ShardReader.read_batch`)."""
    keys, encoded, corrupt = reader.encoded(positions)
    bad = [j for j, data in enumerate(encoded) if data is None]
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded if data is not None]
    height, width, channels = reader.shape
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (for torchcodec); the pinned 0.29.1 has them
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            decoded = decode_jpeg(tensors, mode=mode, device=device) if tensors else []
        except RuntimeError:
            decoded = [_decode_one(t, mode, device) for t in tensors]
    images = torch.empty((len(keys), channels, height, width), dtype=torch.uint8, device=device)
    it = iter(decoded)
    for j in range(len(keys)):
        image = None if j in bad else next(it)
        if image is None or tuple(image.shape) != (channels, height, width):
            if j not in bad:
                shard = reader.source.shards[int(positions[j, 0])].name
                corrupt.append(CorruptReport(shard, keys[j], "cannot decode jpg" if image is None else f"decoded shape {tuple(image.shape)}"))
                bad.append(j)
            continue
        images[j] = image
    if bad and on_corrupt == "fail":
        raise CorruptSampleError(corrupt[0].shard, corrupt[0].key, corrupt[0].reason)
    fill_from_good(images, keys, sorted(bad), corrupt)
    return images, keys, corrupt


def _decode_one(data: torch.Tensor, mode: ImageReadMode, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=mode, device=device)
    except RuntimeError:
        return None
