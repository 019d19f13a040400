"""How close a generator's images are to the data: sliced Wasserstein distance (SWD) on image
patches, diversity (mean pairwise distance against the data's), and FID/KID from local weights.
Metrics only: which images they compare is evaluate.py's to say.

SWD follows ProGAN (Karras et al. 2018, appendix D): a Laplacian pyramid of every image,
random 7x7 patches at each level as descriptors, each colour channel normalized, then the
sliced Wasserstein distance between the real and generated descriptor sets (512 random
projections), per level and averaged. Reported x 1e3 like the paper. Two settings
(`eval.swd_mode`):
- `paper`: the paper's: 128 patches per image per level, each set normalized by its own
  statistics (per level and channel). The paper uses 16k images; `eval.num_images` sets N.
- `real_stats`: 64 patches per image, and both sets normalized with the real set's statistics,
  so a global colour cast counts (the paper's own normalization hides it); shardgan's earlier
  setting, kept so old numbers can be reproduced.

FID and KID are torchmetrics' implementations on torch-fidelity's Inception-v3 port of the
TensorFlow FID graph (the network published FIDs use), loaded from a weights file the user
supplies (`eval.fid_weights`: pt_inception-2015-12-05-6726825d.pth); nothing is ever
downloaded. Images go in as uint8 RGB and are resized to 299x299 the way TensorFlow did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .pixels import to_float, to_uint8
from .errors import ConfigError

PATCH_SIZE = 7
SWD_MODES = {"paper": (128, "each"), "real_stats": (64, "real")}
"""eval.swd_mode -> (patches per image per level, whose statistics normalize each set)."""
PATCHES_PER_IMAGE = 128
"""ProGAN's 128 from each image (of 16k images there)."""
NUM_PROJECTIONS = 512
PROJECTIONS_PER_CHUNK = 128
MIN_LEVEL_SIZE = 12
"""The pyramid stops before a level's short side would drop below this (16x12 for 4:3 frames)."""
NUM_QUANTILES = 1024
SWD_SCALE = 1e3
_GAUSS_1D = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


# -- SWD -------------------------------------------------------------------------------------


def _blur(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial (Gaussian) blur per channel, reflect-padded: (B, C, H, W) -> same shape."""
    c = x.shape[1]
    k = _GAUSS_1D.to(x)
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-insertion upsampling by 2 then blur (x4 keeps the brightness), cropped to `size`."""
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = 4 * x
    return _blur(up)[:, :, : size[0], : size[1]]


def num_levels(height: int, width: int) -> int:
    levels = 1
    while min(height, width) // 2 >= MIN_LEVEL_SIZE:
        height, width, levels = height // 2, width // 2, levels + 1
    return levels


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels, finest first; the last level is the low-pass residual."""
    pyramid = []
    current = images
    for _ in range(levels - 1):
        down = _blur(current)[:, :, ::2, ::2]
        pyramid.append(current - _up(down, current.shape[-2:]))
        current = down
    return pyramid + [current]


def random_patches(level: torch.Tensor, per_image: int, generator: torch.Generator) -> torch.Tensor:
    """`per_image` random PATCH_SIZE^2 patches of each image: (B, C, H, W) -> (B * per_image, C, P*P)."""
    b, c, h, w = level.shape
    if min(h, w) < PATCH_SIZE:
        raise ValueError(f"images of {w}x{h} are smaller than the {PATCH_SIZE}x{PATCH_SIZE} SWD patches")
    ys = torch.randint(0, h - PATCH_SIZE + 1, (b, per_image, 1, 1), generator=generator).to(level.device)
    xs = torch.randint(0, w - PATCH_SIZE + 1, (b, per_image, 1, 1), generator=generator).to(level.device)
    offsets = torch.arange(PATCH_SIZE, device=level.device)
    rows, cols = ys + offsets.view(1, 1, -1, 1), xs + offsets.view(1, 1, 1, -1)  # (B, N, P, P)
    batch = torch.arange(b, device=level.device).view(b, 1, 1, 1)
    patches = level.permute(0, 2, 3, 1)[batch, rows, cols]  # (B, N, P, P, C)
    return patches.permute(0, 1, 4, 2, 3).reshape(b * per_image, c, PATCH_SIZE * PATCH_SIZE)


def random_directions(dim: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """(dim, count) random unit vectors."""
    directions = torch.randn(dim, count, generator=generator)
    return directions / directions.norm(dim=0, keepdim=True)


def projected_quantiles(descriptors: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Quantiles of the descriptors (N, D) projected on each direction (D, P): (P, NUM_QUANTILES).

    The 1-D Wasserstein-1 distance is the mean gap between quantile functions, so the real side
    is stored as quantiles once, and sets of any size compare.
    """
    n = len(descriptors)
    picks = ((torch.arange(NUM_QUANTILES, device=descriptors.device) + 0.5) * n / NUM_QUANTILES).long()
    chunks = []
    for chunk in directions.split(PROJECTIONS_PER_CHUNK, dim=1):
        projected = chunk.T @ descriptors.T  # (k, N): sorting along the contiguous dim is faster
        chunks.append(sorted_rows(projected)[:, picks])
    return torch.cat(chunks)


def sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of `x` (k, N) sorted. On a CPU numpy's sort (x86-simd-sort) gives the same values
    ~16x faster than torch's, which took three quarters of an evaluation (the fake side's 12
    sorts of 128 x 32k); elsewhere torch's."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.detach().numpy(), axis=1))
    return x.sort(dim=1).values


class SlicedWasserstein:
    """Holds the real images' projected patch quantiles; `swd(fake)` compares a generated set with them.

    `normalize`: "each" (the paper: each set by its own per-level, per-channel mean and std) or
    "real" (both sets by the real set's). Patch positions and projections come from `seed`, so
    calls during a run are comparable. The work runs on `device` (the training GPU: one
    evaluation of 512 images took 20 s on one CPU thread), the draws on CPU generators.
    """

    def __init__(
        self, real: torch.Tensor, seed: int = 0, patches_per_image: int = PATCHES_PER_IMAGE,
        num_projections: int = NUM_PROJECTIONS, normalize: str = "each", device: torch.device | str = "cpu",
    ):  # fmt: skip
        assert normalize in ("each", "real"), normalize
        self.device = torch.device(device)
        real = to_float(real.detach().to(self.device))
        self.seed, self.patches_per_image, self.normalize = seed, patches_per_image, normalize
        self.levels = num_levels(*real.shape[-2:])
        raw = self._descriptors(real, stream=0)
        self.real_stats = [_stats(d) for d in raw]
        generator = torch.Generator().manual_seed(seed * 1000 + 2)
        self.directions = [random_directions(d[0].numel(), num_projections, generator).to(self.device) for d in raw]
        self.real = [projected_quantiles(d, p) for d, p in zip(_normalize(raw, self.real_stats), self.directions)]

    @classmethod
    def with_mode(cls, real: torch.Tensor, mode: str, seed: int = 0, device: torch.device | str = "cpu") -> SlicedWasserstein:
        """The settings of `eval.swd_mode` (see SWD_MODES)."""
        patches, normalize = SWD_MODES[mode]
        return cls(real, seed, patches_per_image=patches, normalize=normalize, device=device)

    def _descriptors(self, images: torch.Tensor, stream: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + stream)
        pyramid = laplacian_pyramid(images, self.levels)
        return [random_patches(level, self.patches_per_image, generator) for level in pyramid]  # (N, C, P*P) each

    def __call__(self, fake: torch.Tensor) -> dict[str, Any]:
        """{"swd": mean over levels, "swd_levels": per level (finest first)}, both x 1e3."""
        raw = self._descriptors(to_float(fake.detach().to(self.device)), stream=1)
        stats = [_stats(d) for d in raw] if self.normalize == "each" else self.real_stats
        gaps = [(real - projected_quantiles(d, p)).abs().mean() for real, d, p in zip(self.real, _normalize(raw, stats), self.directions)]
        per_level = [SWD_SCALE * v for v in torch.stack(gaps).tolist()]  # one read of the device
        return {"swd": round(sum(per_level) / len(per_level), 4), "swd_levels": [round(v, 4) for v in per_level]}


def _stats(descriptors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of one level's descriptors (N, C, P*P)."""
    return descriptors.mean(dim=(0, 2), keepdim=True), descriptors.std(dim=(0, 2), keepdim=True).clamp_min(1e-8)


def _normalize(descriptors: list[torch.Tensor], stats: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    return [((d - mean) / std).flatten(1) for d, (mean, std) in zip(descriptors, stats)]


def swd(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, mode: str = "paper") -> float:
    """One-shot SWD x 1e3 between two image sets (uint8 or [-1, 1] floats, (B, C, H, W))."""
    return SlicedWasserstein.with_mode(real, mode, seed)(fake)["swd"]


# -- diversity ---------------------------------------------------------------------------------

DIVERSITY_SIDE = 8
"""Images are area-downsampled until their longer side is at most this many pixels (64x48 ->
8x6) before distances are taken: layout and colour count, pixel speckle averages away."""


def mean_pairwise_distance(images: torch.Tensor) -> torch.Tensor:
    """Mean L2 distance over all pairs of a set (uint8 or [-1, 1] floats, (N, C, H, W)), on the
    downsampled images, per element (RMS), as a 0-d tensor on the images' device (no sync):
    one image plus noise scores near 0, however noisy."""
    x = to_float(images.detach())
    factor = -(-max(x.shape[-2:]) // DIVERSITY_SIDE)  # ceil
    small = F.avg_pool2d(x, factor, ceil_mode=True) if factor > 1 else x  # (N, C, <= 8, <= 8)
    flat = small.flatten(1)
    return (torch.pdist(flat) / flat.shape[1] ** 0.5).mean()


def diversity(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The samples' mean pairwise distance over the real images' (`real`: images, or their mean
    pairwise distance): ~1 when G varies as much as the data, near 0 when every z gives (nearly)
    the same image."""
    reference = real if real.dim() == 0 else mean_pairwise_distance(real)
    return mean_pairwise_distance(fake) / reference.to(fake.device).clamp_min(1e-8)


# -- FID / KID (torchmetrics, on Inception weights the user supplies) -------------------------

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FEATURE_BATCH = 64
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [-1, 1] float (N, C, H, W) -> uint8 (N, 3, H, W) on the CPU (grey repeated)."""
    images = to_uint8(images.detach().cpu())
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def inception_features(weights: str | Path) -> nn.Module:
    """torch-fidelity's FID Inception-v3 (2048-d pool features of uint8 images) from a local file."""
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"eval.fid_weights: no file {path} (FID/KID need the FID Inception weights {FID_WEIGHTS_FILE} you provide; shardgan never downloads them)")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError:
        raise ConfigError("eval.fid_weights: FID/KID need torchmetrics and torch-fidelity (pip install 'shardgan[fid]')") from None
    try:
        # antialias=False: resize to 299 like the TensorFlow graph, so the numbers match published FIDs
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path), antialias=False)
    except Exception as e:  # noqa: BLE001 - any failure means "not the weights we need"
        raise ConfigError(f"eval.fid_weights: {path} is not the FID Inception state_dict {FID_WEIGHTS_FILE} ({str(e).splitlines()[0]})") from None


class _Features(nn.Module):
    """Pass-through for features computed once: the metrics take them as their 'images'."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class FidKid:
    """FID and KID (torchmetrics) of generated sets against one real set, on `features`: any
    module from uint8 (N, 3, H, W) to (N, D) (the Inception above; a small stand-in in tests).
    The real features are computed once; each set's features feed both metrics."""

    def __init__(self, features: nn.Module, real: torch.Tensor, device: torch.device):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        self.features, self.device = features.eval().to(device), device
        real_features = self.extract(real)
        passthrough = _Features(real_features.shape[1])
        self.fid = FrechetInceptionDistance(feature=passthrough, reset_real_features=False)
        self.kid = KernelInceptionDistance(feature=passthrough, reset_real_features=False, subsets=KID_SUBSETS, subset_size=min(KID_SUBSET_SIZE, len(real)))
        self.fid.update(real_features, real=True)
        self.kid.update(real_features, real=True)

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D) float64 features on the CPU."""
        batches = to_uint8_rgb(images).split(FEATURE_BATCH)
        return torch.cat([self.features(b.to(self.device)).reshape(len(b), -1).double().cpu() for b in batches])

    def __call__(self, fake: torch.Tensor) -> dict[str, float]:
        """{"fid": ..., "kid": ...} of `fake` (uint8 or [-1, 1] floats); KID's subsets are drawn
        from a fixed seed (torchmetrics draws them from the global RNG, hence the fork)."""
        fake_features = self.extract(fake)
        self.fid.reset(), self.kid.reset()  # keeps the real features
        self.fid.update(fake_features, real=False)
        self.kid.update(fake_features, real=False)
        self.kid.subset_size = min(self.kid.subset_size, len(fake))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            kid_mean, _ = self.kid.compute()
        return {"fid": round(float(self.fid.compute()), 4), "kid": round(float(kid_mean), 6)}
