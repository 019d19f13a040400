"""DCGAN generator and discriminator for any W x H and channel count, plus an EMA helper.

Layers per spatial dimension, from the image size S back to a small start size:
S even -> S/2 with kernel 4 (2x up/down), S odd -> (S-1)/2 with kernel 5 (2x+1), until the
smaller dimension would drop below 3. G starts with a ConvT of kernel (h0, w0) from 1x1 and
goes up with stride 2, padding 1 (or, with model.upsample = "nearest", resizes to the same
sizes and convolves 3x3); D mirrors G with stride-2 convs and ends with a conv of
kernel (h0, w0) to one logit. 64x64 gives the classic DCGAN (start 4x4, all kernels 4).
The original project's 88x66 layout used other D kernels; `ORIGINAL_LAYOUTS` keeps it so its
parameter counts (GC7M: G 4,338,560, D 3,783,424) are reproduced exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .errors import ConfigError

Kernel = tuple[int, int]

MAX_CHANNEL_MULT = 8
"""Feature maps double per layer up to 8 x ngf/ndf (the classic DCGAN's widest layer)."""
MIN_START = 3
MAX_ASPECT = 4
"""A start block more than 4x wider than tall (or taller than wide) is refused: not a DCGAN image."""


@dataclass(frozen=True)
class Layout:
    """Kernels of G's layers (first: 1x1 -> start size) and D's layers (last: start size -> 1x1)."""

    g_kernels: tuple[Kernel, ...]
    d_kernels: tuple[Kernel, ...]


ORIGINAL_LAYOUTS: dict[tuple[int, int], Layout] = {
    # (width, height): the original project's 88x66 models, kernels as (kH, kW).
    (88, 66): Layout(
        g_kernels=((4, 5), (4, 5), (4, 4), (5, 4), (4, 4)),
        d_kernels=((4, 4), (3, 4), (3, 4), (5, 5), (4, 5)),
    ),
}


def _halvings(size: int, count: int) -> tuple[int, list[int]]:
    """Start size after `count` halvings of `size`, and the up-sampling kernels back to `size`."""
    kernels = []
    for _ in range(count):
        kernels.append(4 if size % 2 == 0 else 5)
        size //= 2
    return size, kernels[::-1]


def choose_layout(width: int, height: int) -> Layout:
    """The original project's layout where it has one, else the mirrored halvings described above."""
    if (width, height) in ORIGINAL_LAYOUTS:
        return ORIGINAL_LAYOUTS[(width, height)]
    count = 0
    while min(width, height) >> (count + 1) >= MIN_START:
        count += 1
    if count == 0:
        raise ConfigError(f"model size {width}x{height}: too small for a DCGAN (each side must be >= 6)")
    h0, kh = _halvings(height, count)
    w0, kw = _halvings(width, count)
    if max(h0, w0) > MAX_ASPECT * min(h0, w0):
        raise ConfigError(
            f"model size {width}x{height}: aspect ratio above {MAX_ASPECT}:1 after {count} halvings "
            f"(start block {w0}x{h0}); crop or resize the frames"
        )
    ups = tuple(zip(kh, kw))
    return Layout(g_kernels=((h0, w0), *ups), d_kernels=(*ups[::-1], (h0, w0)))


def _mults(count: int) -> list[int]:
    """Channel multipliers of D's layers 0..count-1 (1, 2, 4, 8, 8, ...); G uses them reversed."""
    return [min(MAX_CHANNEL_MULT, 2**i) for i in range(count)]


class Generator(nn.Module):
    """z (B, nz, 1, 1) -> image (B, C, H, W) in [-1, 1]."""

    def __init__(self, cfg: ModelConfig, layout: Layout):
        super().__init__()
        widths = [cfg.ngf * m for m in reversed(_mults(len(layout.g_kernels) - 1))]
        layers: list[nn.Module] = []
        in_ch = cfg.nz
        for i, (kernel, out_ch) in enumerate(zip(layout.g_kernels, widths)):
            if i == 0:  # 1x1 -> start block
                layers.append(nn.ConvTranspose2d(in_ch, out_ch, kernel, 1, 0, bias=False))
            else:  # then 2x up
                layers += upsampling(in_ch, out_ch, kernel, cfg.upsample)
            layers += [nn.BatchNorm2d(out_ch), nn.ReLU(True)]
            in_ch = out_ch
        layers += [*upsampling(in_ch, cfg.channels, layout.g_kernels[-1], cfg.upsample), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


def upsampling(in_ch: int, out_ch: int, kernel: Kernel, mode: str) -> list[nn.Module]:
    """One 2x step up of G (2x + 1 along a side with kernel 5). "convtranspose": the DCGAN's
    stride-2 transposed convolution; "nearest": nearest-neighbour resizing to the same size, then
    a 3x3 convolution, which cannot paint the checkerboard pattern a transposed convolution's
    2x2 phases learn easily (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts")."""
    if mode == "convtranspose":
        return [nn.ConvTranspose2d(in_ch, out_ch, kernel, 2, 1, bias=False)]
    return [Resize2x(kernel), nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)]


class Resize2x(nn.Module):
    """Nearest-neighbour resizing to the size a stride-2, padding-1 transposed convolution with
    this kernel gives: 2 x side + (kernel - 4)."""

    def __init__(self, kernel: Kernel):
        super().__init__()
        self.extra = (kernel[0] - 4, kernel[1] - 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return F.interpolate(x, size=(2 * h + self.extra[0], 2 * w + self.extra[1]), mode="nearest")


class MinibatchStd(nn.Module):
    """ProGAN's minibatch-stddev layer: (B, C, H, W) -> (B, C + 1, H, W), the extra map holding the
    std over each group of `group_size` images (averaged over features and pixels) for all of
    the group. A batch of near-copies shows a std near 0 that real batches never show."""

    def __init__(self, group_size: int):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        group = min(self.group_size, b)
        assert b % group == 0, f"minibatch-stddev: batch {b} is not a multiple of the group size {group}"
        y = x.float().reshape(group, b // group, c, h, w)  # image g * (b // group) + i is member g of group i, as StyleGAN2
        # the variance by hand: torch's var over dim 0 of this small tensor takes ~1 ms on a CPU
        # (40x the arithmetic), 11 % of the demo's step with D run four times
        variance = (y - y.mean(dim=0)).square().mean(dim=0)
        std = (variance + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (b // group,)
        return torch.cat([x, std.to(x.dtype).repeat(group)[:, None, None, None].expand(b, 1, h, w)], dim=1)


class Discriminator(nn.Module):
    """image (B, C, H, W) -> one logit per image (B,); the original project's Sigmoid lives in the BCE loss."""

    def __init__(self, cfg: ModelConfig, layout: Layout):
        super().__init__()
        widths = [cfg.ndf * m for m in _mults(len(layout.d_kernels) - 1)]
        sn = nn.utils.parametrizations.spectral_norm if cfg.spectral_norm else (lambda m: m)
        batchnorm = cfg.d_batchnorm and not cfg.spectral_norm
        layers: list[nn.Module] = []
        in_ch = cfg.channels
        for i, (kernel, out_ch) in enumerate(zip(layout.d_kernels, widths)):
            layers.append(sn(nn.Conv2d(in_ch, out_ch, kernel, 2, 1, bias=False)))
            if i > 0 and batchnorm:  # never on the first layer
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch = out_ch
        if cfg.minibatch_std:
            layers.append(MinibatchStd(cfg.minibatch_std))
            in_ch += 1
        layers.append(sn(nn.Conv2d(in_ch, 1, layout.d_kernels[-1], 1, 0, bias=False)))  # start block -> 1x1
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolution (to one logit) in fp32 under any autocast: a bf16 logit of 10
        would be rounded to a multiple of 0.06 before the loss sees it."""
        *body, last = self.main
        for layer in body:
            x = layer(x)
        with torch.autocast(x.device.type, enabled=False):
            return last(x.float()).flatten()


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """DCGAN init (conv N(0, 0.02), BN N(1, 0.02) and 0), drawn from an explicit generator."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(weight, 0.0, 0.02, generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02, generator=generator)
            nn.init.zeros_(m.bias)


SN_POWER_ITERATIONS = 15
"""Power iterations for spectral norm's u/v at init (what PyTorch runs on its default weights)."""


@torch.no_grad()
def init_spectral_norm(module: nn.Module, generator: torch.Generator) -> None:
    """Spectral norm's u and v for the weights as they are now: random unit vectors from
    `generator`, then SN_POWER_ITERATIONS power iterations on the weight matrix. PyTorch runs
    them when spectral_norm wraps a layer, on the default weights that init_weights then
    replaces; without this, the first steps divide by a sigma estimated for other weights."""
    for m in module.modules():
        if not hasattr(m, "parametrizations") or "weight" not in m.parametrizations:
            continue
        for sn in m.parametrizations.weight:
            if not hasattr(sn, "_u"):
                continue
            weight = m.parametrizations.weight.original
            dim = getattr(sn, "dim", 0)
            matrix = weight.movedim(dim, 0).flatten(1)  # (out, in * kH * kW), as spectral_norm reshapes
            u = F.normalize(torch.randn(matrix.shape[0], generator=generator), dim=0, eps=sn.eps)
            v = F.normalize(torch.randn(matrix.shape[1], generator=generator), dim=0, eps=sn.eps)
            for _ in range(SN_POWER_ITERATIONS):
                u = F.normalize(matrix @ v, dim=0, eps=sn.eps)
                v = F.normalize(matrix.T @ u, dim=0, eps=sn.eps)
            sn._u.copy_(u)
            sn._v.copy_(v)


def build_models(cfg: ModelConfig, seed: int) -> tuple[Generator, Discriminator]:
    """Build G and D with weights drawn from `seed` (spectral norm's u/v from the final weights);
    check G(z) is (C, H, W) and D(x) one logit."""
    layout = choose_layout(cfg.width, cfg.height)
    with torch.random.fork_rng(devices=[]):  # PyTorch's default inits draw from the global RNG; all replaced below
        gen, disc = Generator(cfg, layout), Discriminator(cfg, layout)
    rng = torch.Generator().manual_seed(seed)
    init_weights(gen, rng)
    init_weights(disc, rng)
    init_spectral_norm(disc, rng)
    _check_shapes(gen, disc, cfg)
    return gen, disc


@torch.no_grad()
def _check_shapes(gen: Generator, disc: Discriminator, cfg: ModelConfig) -> None:
    """Run both nets in eval mode (no BN/SN state changes) on a dummy batch of 2."""
    gen.eval(), disc.eval()
    image = gen(torch.zeros(2, cfg.nz, 1, 1))
    expected = (2, cfg.channels, cfg.height, cfg.width)
    if tuple(image.shape) != expected:
        raise ConfigError(f"model size {cfg.width}x{cfg.height}: G builds {tuple(image.shape[1:])}, expected {expected[1:]}")
    logits = disc(image)
    if tuple(logits.shape) != (2,):
        raise ConfigError(f"model size {cfg.width}x{cfg.height}: D gives {tuple(logits.shape)} per batch of 2, expected one logit each")
    gen.train(), disc.train()


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class EMA:
    """Exponential moving average of G's weights: what samples, eval and `generate` use.

    BatchNorm's running statistics are neither averaged nor copied from G: G's own belong to
    G's newest weights, and under the averaged weights they wash the samples out (greyer,
    flatter than the data). They are recomputed for the averaged weights from a fixed noise
    set ("standing statistics", as in BigGAN) by the first compute_averaged after an update.
    """

    def __init__(self, model: nn.Module, decay: float, stats_noise: torch.Tensor):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.stats_noise = stats_noise
        self.fresh = False

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One lerp for all parameters (a few kernels on CUDA, not one per parameter)."""
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - self.decay)
        self.fresh = False

    def load_state_dict(self, state: dict) -> None:
        """Restore the averaged weights; their BatchNorm statistics are recomputed by the next compute_averaged."""
        self.model.load_state_dict(state)
        self.fresh = False

    def compute_averaged(self) -> nn.Module:
        """The averaged model in eval mode, its BatchNorm statistics those of its own weights:
        after an update, recomputed first (all of `stats_noise` through it)."""
        if not self.fresh:
            standing_stats(self.model, self.stats_noise)
            self.fresh = True
        return self.model


STANDING_STATS_BATCH = 64


@torch.no_grad()
def standing_stats(gen: nn.Module, noise: torch.Tensor) -> None:
    """Set G's BatchNorm running statistics to the plain average over `noise`, in batches of
    STANDING_STATS_BATCH, of the batch statistics G normalizes with in training."""
    norms = [m for m in gen.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    gen.train()
    device = next(gen.parameters()).device
    for batch in noise.split(STANDING_STATS_BATCH):
        gen(batch.to(device))
    gen.eval()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
