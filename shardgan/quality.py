"""Sample quality without downloaded weights: sliced Wasserstein distance (SWD) on image patches.

SWD follows ProGAN (Karras et al. 2018, appendix D): a Laplacian pyramid of every image,
random 7x7 patches at each level as descriptors, each colour channel normalized, then the
sliced Wasserstein distance between the real and generated descriptor sets (512 random
projections), per level and averaged. Reported x 1e3 like the paper. One deliberate change:
ProGAN normalizes each set with its own statistics, which hides a global colour cast; here both
sets use the real set's statistics, so a colour cast counts.

FID/KID need Inception-v3 weights that the user supplies by path (`eval.fid_weights`, a
torchvision `inception_v3` state_dict); nothing is ever downloaded. They use torchvision's
Inception, so the numbers compare across shardgan runs, not with published FIDs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config, DataConfig
from .errors import CheckpointError, ConfigError
from .loader import sample_images

PATCH_SIZE = 7
PATCHES_PER_IMAGE = 64
"""ProGAN takes 128 from each of 16k images; 64 keeps an eval of 512 images to seconds on a CPU."""
NUM_PROJECTIONS = 512
PROJECTIONS_PER_CHUNK = 128
MIN_LEVEL_SIZE = 12
"""The pyramid stops before a level's short side would drop below this (16x12 for 4:3 frames)."""
NUM_QUANTILES = 1024
SWD_SCALE = 1e3
GEN_BATCH = 128
_GAUSS_1D = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


# -- images ----------------------------------------------------------------------------------


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] (B, C, H, W) -> float32 [-1, 1] on the CPU."""
    images = images.detach().cpu()
    return images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float().clamp(-1, 1)


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
    ys = torch.randint(0, h - PATCH_SIZE + 1, (b, per_image, 1, 1), generator=generator)
    xs = torch.randint(0, w - PATCH_SIZE + 1, (b, per_image, 1, 1), generator=generator)
    offsets = torch.arange(PATCH_SIZE)
    rows, cols = ys + offsets.view(1, 1, -1, 1), xs + offsets.view(1, 1, 1, -1)  # (B, N, P, P)
    batch = torch.arange(b).view(b, 1, 1, 1)
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
    picks = ((torch.arange(NUM_QUANTILES) + 0.5) * n / NUM_QUANTILES).long()
    chunks = []
    for chunk in directions.split(PROJECTIONS_PER_CHUNK, dim=1):
        projected = chunk.T @ descriptors.T  # (k, N): sorting along the contiguous dim is faster
        chunks.append(projected.sort(dim=1).values[:, picks])
    return torch.cat(chunks)


class SlicedWasserstein:
    """Holds the real images' projected patch quantiles; `swd(fake)` compares a generated set with them.

    Patch positions and projections come from `seed`, so calls during a run are comparable.
    """

    def __init__(self, real: torch.Tensor, seed: int = 0, patches_per_image: int = PATCHES_PER_IMAGE, num_projections: int = NUM_PROJECTIONS):
        real = to_float(real)
        self.seed, self.patches_per_image = seed, patches_per_image
        self.levels = num_levels(*real.shape[-2:])
        raw = self._descriptors(real, stream=0)
        # Per level and channel, the real set's mean/std normalize both sets (see module docstring).
        self.stats = [(d.mean(dim=(0, 2), keepdim=True), d.std(dim=(0, 2), keepdim=True).clamp_min(1e-8)) for d in raw]
        generator = torch.Generator().manual_seed(seed * 1000 + 2)
        self.directions = [random_directions(d[0].numel(), num_projections, generator) for d in raw]
        self.real = [projected_quantiles(d, p) for d, p in zip(self._normalize(raw), self.directions)]

    def _descriptors(self, images: torch.Tensor, stream: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + stream)
        pyramid = laplacian_pyramid(images, self.levels)
        return [random_patches(level, self.patches_per_image, generator) for level in pyramid]  # (N, C, P*P) each

    def _normalize(self, descriptors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [((d - mean) / std).flatten(1) for d, (mean, std) in zip(descriptors, self.stats)]

    def __call__(self, fake: torch.Tensor) -> dict[str, Any]:
        """{"swd": mean over levels, "swd_levels": per level (finest first)}, both x 1e3."""
        descriptors = self._normalize(self._descriptors(to_float(fake), stream=1))
        per_level = [
            SWD_SCALE * (real - projected_quantiles(d, p)).abs().mean().item()
            for real, d, p in zip(self.real, descriptors, self.directions)
        ]
        return {"swd": round(sum(per_level) / len(per_level), 4), "swd_levels": [round(v, 4) for v in per_level]}


def swd(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> float:
    """One-shot SWD x 1e3 between two image sets (uint8 or [-1, 1] floats, (B, C, H, W))."""
    return SlicedWasserstein(real, seed)(fake)["swd"]


# -- FID / KID (only with user-supplied Inception weights) -----------------------------------


class InceptionFeatures(nn.Module):
    """torchvision Inception-v3 with the user's state_dict; images -> (N, 2048) pool features."""

    def __init__(self, weights: str | Path, device: torch.device):
        super().__init__()
        from torchvision.models import inception_v3

        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"eval.fid_weights: no file {path} (FID/KID need torchvision inception_v3 weights you provide; shardgan never downloads them)")
        model = inception_v3(weights=None, aux_logits=True, init_weights=False)
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 - any failure means "not the weights we need"
            raise ConfigError(f"eval.fid_weights: {path} is not a torchvision inception_v3 state_dict ({str(e).splitlines()[0]})") from None
        model.fc = nn.Identity()
        self.model = model.eval().to(device)
        self.device = device
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = []
        for batch in to_float(images).split(64):
            x = (batch.to(self.device) + 1) / 2
            x = x.expand(-1, 3, -1, -1)  # grayscale -> RGB
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            feats.append(self.model((x - self.mean.to(x)) / self.std.to(x)).double().cpu())
        return torch.cat(feats)


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(Ca + Cb - 2 (Ca^1/2 Cb Ca^1/2)^1/2) for (N, D) feature sets."""
    a, b = a.double(), b.double()
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(ca)
    cross = torch.linalg.eigvalsh(root_a @ cb @ root_a).clamp_min(0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).square().sum() + ca.trace() + cb.trace() - 2 * cross)


def kernel_inception_distance(a: torch.Tensor, b: torch.Tensor, num_subsets: int = 10, subset_size: int = 1000, seed: int = 0) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets (Binkowski et al.)."""
    a, b = a.double(), b.double()
    m = min(subset_size, len(a), len(b))
    generator = torch.Generator().manual_seed(seed)
    kernel = lambda x, y: (x @ y.T / x.shape[1] + 1) ** 3  # noqa: E731
    total = 0.0
    for _ in range(num_subsets):
        x = a[torch.randperm(len(a), generator=generator)[:m]]
        y = b[torch.randperm(len(b), generator=generator)[:m]]
        kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
        total += float((kxx.sum() - kxx.trace()) / (m * (m - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1)) - 2 * kxy.mean())
    return total / num_subsets


# -- a generator against the val split ------------------------------------------------------


def load_real_images(data: DataConfig, num_images: int) -> torch.Tensor:
    """Up to `num_images` held-out frames (the `val` split) as uint8 (N, C, H, W), local or remote."""
    return sample_images(data, "val", num_images, seed=0)


@torch.no_grad()
def generate_images(generator: nn.Module, num_images: int, nz: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """`num_images` samples from fixed noise (same seed, same latents), in eval mode: (N, C, H, W) in [-1, 1]."""
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(num_images, nz, 1, 1, generator=rng)
    was_training = generator.training
    generator.eval()
    try:
        return torch.cat([generator(chunk.to(device)).float().cpu() for chunk in z.split(GEN_BATCH)])
    finally:
        generator.train(was_training)


@dataclass
class Evaluator:
    """The real side, computed once per run: SWD descriptors and, with weights, Inception features."""

    swd: SlicedWasserstein
    num_images: int
    nz: int
    device: torch.device
    inception: InceptionFeatures | None = None
    real_features: torch.Tensor | None = None

    @classmethod
    def build(cls, cfg: Config, device: torch.device) -> Evaluator:
        real = load_real_images(cfg.data, cfg.eval.num_images)
        inception = InceptionFeatures(cfg.eval.fid_weights, device) if cfg.eval.fid_weights else None
        return cls(
            swd=SlicedWasserstein(real),
            num_images=len(real),
            nz=cfg.model.nz,
            device=device,
            inception=inception,
            real_features=inception(real) if inception is not None else None,
        )

    def __call__(self, generator: nn.Module) -> dict[str, Any]:
        fake = generate_images(generator, self.num_images, self.nz, self.device)
        scores = self.swd(fake)
        if self.inception is not None:
            fake_features = self.inception(fake)
            scores["fid"] = round(frechet_distance(self.real_features, fake_features), 4)
            scores["kid"] = round(kernel_inception_distance(self.real_features, fake_features), 6)
        return scores


def evaluate_generator(generator: nn.Module, cfg: Config, device: torch.device) -> dict[str, Any]:
    """One-shot: build the real side and score `generator` (a loop should keep an Evaluator)."""
    return Evaluator.build(cfg, device)(generator)


def evaluate_run(run_root: str | Path, checkpoint: Path | None = None, overrides: list[str] | None = None, *, best: bool = False) -> dict[str, Any]:
    """`shardgan eval`: score a run's checkpoint (default: its newest valid one, or with `best` the
    lowest-SWD one) against its val split; `overrides` (section.key=value) change eval settings or
    point data.shards elsewhere."""
    from . import checkpoint as ckpt
    from .config import config_from_dict
    from .generate import generator_from_state
    from .rundir import RunDir, append_metrics

    run = RunDir(Path(run_root))
    if not run.root.is_dir():
        raise CheckpointError(f"run directory not found: {run.root}")
    state, checkpoint = ckpt.load_given_or_newest(run.best_checkpoints if best else run.checkpoints, checkpoint)
    cfg = config_from_dict(state[ckpt.CONFIG], str(checkpoint), overrides)
    generator = generator_from_state(state)
    scores = {"step": state[ckpt.STEP], "checkpoint": str(checkpoint), **evaluate_generator(generator, cfg, torch.device("cpu"))}
    append_metrics(run.eval_metrics, scores)
    return scores
