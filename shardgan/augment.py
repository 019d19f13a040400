"""Batched, on-device augmentation: uint8 frames in, floats in [-1, 1] out.

The original project ran Resize(+2) + RandomCrop + ColorJitter + Normalize per sample in PIL on
the CPU; here the same ops run on whole batches on the training device, and every
random draw comes from an explicit generator so a resumed run draws the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import DIFFAUGMENT_OPS, DataConfig, DiffAugmentConfig
from .pixels import to_unit, unit_to_float

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R 601 luma, the weights torchvision's ColorJitter uses."""


def augment(images: torch.Tensor, cfg: DataConfig, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, C, H, W) on device -> float in [-1, 1]: translate, colour jitter, optional hflip.

    All randomness comes from `generator` (on any device; draws are moved to the images' device).
    """
    x = to_unit(images)  # (B, C, H, W) in [0, 1]
    if cfg.translate_px > 0:
        x = translate(x, cfg.translate_px, generator)
    if cfg.color_jitter > 0:
        x = color_jitter(x, cfg.color_jitter, generator)
    if cfg.hflip:
        x = hflip(x, generator)
    return unit_to_float(x)


def _uniform(generator: torch.Generator, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    draw = torch.rand(n, generator=generator, device=generator.device)
    return (low + (high - low) * draw).to(device)


def _randint(generator: torch.Generator, n: int, low: int, high: int, device: torch.device) -> torch.Tensor:
    """n integers in [low, high] inclusive."""
    return torch.randint(low, high + 1, (n,), generator=generator, device=generator.device).to(device)


def translate(x: torch.Tensor, max_px: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to max_px in x and y; pixels shifted in repeat the edge.

    Equivalent to the original project's Resize(+2) + RandomCrop for max_px=1, without resampling.
    """
    b = x.shape[0]
    dy = _randint(generator, b, -max_px, max_px, x.device)
    dx = _randint(generator, b, -max_px, max_px, x.device)
    return shift(x, dy, dx, edge=True)


def shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, *, edge: bool) -> torch.Tensor:
    """Translate image i of (B, C, H, W) by (dy[i], dx[i]) pixels; the pixels shifted in repeat
    the edge (`edge`) or are 0 (DiffAugment's zero pad).

    As two batched products with 0/1 matrices (rows, then columns), in fp32 whatever the
    autocast: each output sums one input pixel and zeros, so it is exact (the same bits as a
    gather), and so is the backward pass, a product too. A gather's backward would scatter-add
    with atomics (not deterministic on CUDA, and refused by torch.use_deterministic_algorithms
    for 4-D tensors)."""
    _, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)  # (H,)
    cols = torch.arange(w, device=x.device)  # (W,)
    from_rows = rows[None, :] - dy[:, None]  # (B, H out): the input row each output row shows
    from_cols = cols[None, :] - dx[:, None]  # (B, W out)
    if edge:
        from_rows, from_cols = from_rows.clamp_(0, h - 1), from_cols.clamp_(0, w - 1)
    pick_rows = (from_rows[:, :, None] == rows[None, None, :]).float()  # (B, H out, H in)
    pick_cols = (from_cols[:, None, :] == cols[None, :, None]).float()  # (B, W in, W out)
    with torch.autocast(x.device.type, enabled=False):
        return pick_rows[:, None] @ x.float() @ pick_cols[:, None]  # (B, C, H, W)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma. Weights as Python scalars: a weight tensor built on the
    device would be a host-to-device copy, and a wait for the GPU, at every step."""
    r, g, b = GRAY_WEIGHTS
    return x[:, 0:1] * r + x[:, 1:2] * g + x[:, 2:3] * b


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors each uniform in [1 - s, 1 + s], per image.

    Same blends as torchvision's ColorJitter, in a fixed order; saturation only for RGB.
    Works in place on `x` (a float copy made by the caller).
    """
    b = x.shape[0]
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    brightness, contrast, saturation = (_uniform(generator, b, low, high, x.device)[:, None, None, None] for _ in range(3))
    x.mul_(brightness).clamp_(0.0, 1.0)
    luma = _gray(x) if x.shape[1] == 3 else x
    mean = luma.mean(dim=(1, 2, 3), keepdim=True)
    x = torch.addcmul(mean * (1 - contrast), x, contrast).clamp_(0.0, 1.0)  # mean + (x - mean) * c
    if x.shape[1] == 3:
        x = torch.addcmul(_gray(x) * (1 - saturation), x, saturation).clamp_(0.0, 1.0)  # gray + (x - gray) * s
    return x


def hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = _uniform(generator, x.shape[0], 0.0, 1.0, x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


# -- differentiable augmentation of D's inputs (DiffAugment / ADA) ----------------------------
#
# Unlike `augment` above (reals only, before training sees them), these ops sit in front of D
# and are applied to reals and fakes alike, in the D step and in the G step, so G is never
# pushed to reproduce them (Zhao et al. 2020, "Differentiable Augmentation"; Karras et al.
# 2020, ADA). One `AugmentParams` is drawn per step and applied to both batches: image i of the
# reals and image i of the fakes get the same shift, cutout and colour change.

def parse_policy(policy: str) -> tuple[str, ...]:
    """"cutout, translation" -> ("translation", "cutout"); "" -> (). Order: DIFFAUGMENT_OPS (config checked the names)."""
    names = {name.strip() for name in policy.split(",")}
    return tuple(op for op in DIFFAUGMENT_OPS if op in names)


@dataclass(frozen=True)
class AugmentParams:
    """One step's draws for a batch of B images of H x W; a None field: that op is off.
    Each op is applied to an image with the configured probability (`on_*` masks, (B,))."""

    shift: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    """(dy, dx, on): integer shifts in pixels, (B,) each."""
    cutout: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    """(y0, x0, on): top-left corner of the erased rectangle, (B,) each."""
    cutout_size: tuple[int, int] = (0, 0)
    color: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    """(brightness, saturation, contrast, on): (B,) each; added / multiplied as in DiffAugment."""


def draw_params(
    ops: tuple[str, ...], shape: torch.Size, generator: torch.Generator, *, probability: float = 1.0,
    translation_ratio: float = 0.125, cutout_ratio: float = 0.5, device: torch.device | str = "cpu",
) -> AugmentParams:
    """Draw every random number of one step's augmentation from `generator` (fixed order and
    count whatever the probability, so the stream never depends on the adaptive p)."""
    b, _, h, w = shape

    def on() -> torch.Tensor:
        return _uniform(generator, b, 0.0, 1.0, device) < probability

    shift = cutout = color = None
    size = (0, 0)
    if "translation" in ops:
        max_y, max_x = int(h * translation_ratio + 0.5), int(w * translation_ratio + 0.5)
        shift = (_randint(generator, b, -max_y, max_y, device), _randint(generator, b, -max_x, max_x, device), on())
    if "cutout" in ops:
        size = (max(1, int(h * cutout_ratio + 0.5)), max(1, int(w * cutout_ratio + 0.5)))
        # the rectangle's centre is anywhere in the image; its part outside is clipped
        cy, cx = _randint(generator, b, 0, h - 1, device), _randint(generator, b, 0, w - 1, device)
        cutout = (cy - size[0] // 2, cx - size[1] // 2, on())
    if "color" in ops:
        color = (
            _uniform(generator, b, -0.5, 0.5, device),  # brightness: added
            _uniform(generator, b, 0.0, 2.0, device),  # saturation: factor around the per-pixel mean
            _uniform(generator, b, 0.5, 1.5, device),  # contrast: factor around the image mean
            on(),
        )
    return AugmentParams(shift=shift, cutout=cutout, cutout_size=size, color=color)


def apply_params(x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Augment float images (B, C, H, W) in [-1, 1] with `params`; differentiable w.r.t. `x`."""
    if params.shift is not None:
        dy, dx, on = params.shift
        x = shift(x, dy * on, dx * on, edge=False)
    if params.cutout is not None:
        x = _cutout(x, *params.cutout, params.cutout_size)
    if params.color is not None:
        x = _color(x, *params.color)
    return x


def _cutout(x: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, on: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Set a size[0] x size[1] rectangle at (y0, x0) of each image to 0 (mid-grey)."""
    _, _, h, w = x.shape
    ys = torch.arange(h, device=x.device)[None, :] - y0[:, None]  # (B, H)
    xs = torch.arange(w, device=x.device)[None, :] - x0[:, None]  # (B, W)
    erase = ((ys >= 0) & (ys < size[0]))[:, :, None] & ((xs >= 0) & (xs < size[1]))[:, None, :]  # (B, H, W)
    erase &= on[:, None, None]
    return x * (~erase)[:, None].to(x.dtype)


def _color(x: torch.Tensor, brightness: torch.Tensor, saturation: torch.Tensor, contrast: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """DiffAugment's rand_brightness, rand_saturation and rand_contrast; images not `on` pass unchanged."""
    view = (-1, 1, 1, 1)
    y = x + brightness.view(view)
    mean = y.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    y = (y - mean) * saturation.view(view) + mean
    mean = y.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    y = (y - mean) * contrast.view(view) + mean
    return torch.where(on.view(view), y, x)


@dataclass
class AdaptiveProbability:
    """ADA's heuristic (Karras et al. 2020): every `interval_steps` steps, r_t = E[sign(D(real))]
    over the interval and all ranks; p moves up by (images in the interval) / ramp_images when
    r_t > target (D is overfitting), down otherwise, within [0, 1].

    Sums of signs are integers, so every rank computes the same p bit for bit. The state (p and
    the interval's running sum and count) goes into the checkpoint."""

    p: torch.Tensor | float
    """A device tensor once updated, so no step reads it on the host."""
    target: float
    interval_steps: int
    ramp_images: int
    sign_sum: torch.Tensor | float = 0.0
    """This rank's sum of sign(D(real)) since the last update (a device tensor: no host sync per step)."""
    count: int = 0

    def observe(self, real_logits: torch.Tensor) -> None:
        self.sign_sum = self.sign_sum + real_logits.detach().float().sign().sum()
        self.count += real_logits.numel()

    def update(self, sign_sum: torch.Tensor | float, count: int) -> None:
        """Fold in one interval's sum (on any device, not read) and count over all ranks; adjust p
        (in float64 on that device, the same bits as in Python) and start a new interval."""
        sign_sum = torch.as_tensor(sign_sum, dtype=torch.float64)
        change = count / self.ramp_images
        self.p = (torch.where(sign_sum / max(count, 1) > self.target, change, -change) + self.p).clamp(0.0, 1.0)
        self.sign_sum, self.count = 0.0, 0

    def state_dict(self) -> dict[str, float | int]:
        return {"p": float(self.p), "sign_sum": float(self.sign_sum), "count": self.count}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.p, self.sign_sum, self.count = float(state["p"]), float(state["sign_sum"]), int(state["count"])


@dataclass
class DiffAugment:
    """The configured policy: `draw` one step's parameters, then apply them to any batch."""

    ops: tuple[str, ...]
    probability: float
    translation_ratio: float
    cutout_ratio: float
    ada: AdaptiveProbability | None = None

    @property
    def p(self) -> float:
        return self.ada.p if self.ada is not None else self.probability

    def draw(self, shape: torch.Size, generator: torch.Generator, device: torch.device | str) -> AugmentParams:
        return draw_params(
            self.ops, shape, generator, probability=self.p, translation_ratio=self.translation_ratio,
            cutout_ratio=self.cutout_ratio, device=device,
        )  # fmt: skip

    def __call__(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        return apply_params(x, params)


def build_diff_augment(cfg: DiffAugmentConfig) -> DiffAugment | None:
    """None when the policy is empty (D sees the images as they are)."""
    ops = parse_policy(cfg.policy)
    if not ops:
        return None
    ada = AdaptiveProbability(cfg.probability, cfg.ada_target, cfg.ada_interval_steps, cfg.ada_ramp_images) if cfg.ada_target > 0 else None
    return DiffAugment(ops, cfg.probability, cfg.translation_ratio, cfg.cutout_ratio, ada)
