"""Batched augmentation: range, determinism from the generator, edge-padded translation, one shift
for both augmentations (the same bits as the gather and the zero-padded shift it replaced)."""

from __future__ import annotations

import torch

from shardgan.augment import augment, color_jitter, shift, translate
from shardgan.config import DataConfig
from shardgan.pixels import to_float


def images(batch: int = 8, channels: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (batch, channels, 12, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_output_is_float_in_range_and_repeats_for_the_same_generator_state():
    cfg = DataConfig(translate_px=2, color_jitter=0.2, hflip=True)
    x = images()
    a = augment(x, cfg, torch.Generator().manual_seed(5))
    b = augment(x, cfg, torch.Generator().manual_seed(5))
    c = augment(x, cfg, torch.Generator().manual_seed(6))
    assert a.dtype == torch.float32 and a.shape == x.shape
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment(x, cfg, torch.Generator().manual_seed(5)), a)  # uint8 input untouched


def test_no_augmentation_is_plain_normalization():
    x = images(channels=1)
    out = augment(x, DataConfig(translate_px=0, color_jitter=0.0, hflip=False), torch.Generator())
    assert torch.equal(out, to_float(x))  # the same bits as the models' conversion


def test_translate_shifts_with_edge_replication():
    x = torch.arange(12 * 16, dtype=torch.float32).reshape(1, 1, 12, 16)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    dy, dx = torch.randint(-2, 3, (1,), generator=g).item(), torch.randint(-2, 3, (1,), generator=g).item()
    g.set_state(state)
    out = translate(x, 2, g)[0, 0]
    rows = (torch.arange(12) - dy).clamp(0, 11)
    cols = (torch.arange(16) - dx).clamp(0, 15)
    assert torch.equal(out, x[0, 0][rows][:, cols])


def gather_shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, edge: bool) -> torch.Tensor:
    """The shifts `shift` replaced: translate's one gather of edge-clamped indices, and a gather
    masked to 0 where DiffAugment's zero pad shows."""
    b, c, h, w = x.shape
    rows = torch.arange(h)[None, :] - dy[:, None]  # (B, H)
    cols = torch.arange(w)[None, :] - dx[:, None]  # (B, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (B, H, W)
    rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    index = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)
    return out if edge else out * inside[:, None]


def test_one_shift_gives_the_gathers_bits_edge_padded_or_zero_padded():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(6, 3, 12, 16, generator=g) * 2 - 1  # arbitrary floats: every bit must survive
    dy, dx = torch.randint(-13, 14, (6,), generator=g), torch.randint(-17, 18, (6,), generator=g)  # some past the edge
    dy[0], dx[0] = 0, 0
    for edge in (True, False):
        out = shift(x, dy, dx, edge=edge)
        assert out.dtype == torch.float32 and torch.equal(out, gather_shift(x, dy, dx, edge)), edge
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(shift(x, dy, dx, edge=False), gather_shift(x, dy, dx, edge=False))  # fp32 whatever the autocast


def test_color_jitter_keeps_gray_images_gray_and_changes_colour_ones():
    g = torch.Generator().manual_seed(3)
    gray = torch.full((4, 3, 6, 6), 0.5)
    out = color_jitter(gray, 0.3, g)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    x = images().float() / 255
    assert not torch.allclose(color_jitter(x.clone(), 0.3, g), x)


# -- differentiable augmentation in front of D ------------------------------------------------

from shardgan.augment import AdaptiveProbability, apply_params, draw_params, parse_policy  # noqa: E402

ALL_OPS = ("translation", "cutout", "color")


def floats(batch: int = 8) -> torch.Tensor:
    return to_float(images(batch))


def test_policy_parsing_keeps_a_fixed_order_and_config_refuses_unknown_ops():
    import pytest

    from shardgan.config import DiffAugmentConfig
    from shardgan.errors import ConfigError

    assert parse_policy("color, translation") == ("translation", "color") and parse_policy("") == ()
    with pytest.raises(ConfigError, match="unknown rotate"):
        DiffAugmentConfig(policy="translation,rotate")
    with pytest.raises(ConfigError, match="diffaugment.probability"):
        DiffAugmentConfig(probability=1.5)


def test_same_generator_state_same_params_and_probability_zero_is_identity():
    x = floats()
    a = apply_params(x, draw_params(ALL_OPS, x.shape, torch.Generator().manual_seed(1)))
    b = apply_params(x, draw_params(ALL_OPS, x.shape, torch.Generator().manual_seed(1)))
    c = apply_params(x, draw_params(ALL_OPS, x.shape, torch.Generator().manual_seed(2)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    off = draw_params(ALL_OPS, x.shape, torch.Generator().manual_seed(1), probability=0.0)
    assert torch.equal(apply_params(x, off), x)
    # the stream does not depend on p: the same shifts are drawn whatever the probability
    assert torch.equal(off.shift[0], draw_params(ALL_OPS, x.shape, torch.Generator().manual_seed(1)).shift[0])


def test_translation_zero_fills_and_cutout_erases_a_rectangle():
    x = torch.ones(1, 1, 8, 8)
    dy, dx, on = torch.tensor([2]), torch.tensor([-3]), torch.tensor([True])
    from shardgan.augment import AugmentParams

    moved = apply_params(x, AugmentParams(shift=(dy, dx, on)))[0, 0]
    assert moved[:2].abs().sum() == 0 and moved[:, 5:].abs().sum() == 0 and moved[2:, :5].eq(1).all()
    cut = apply_params(x, AugmentParams(cutout=(torch.tensor([1]), torch.tensor([2]), on), cutout_size=(4, 4)))[0, 0]
    assert cut[1:5, 2:6].abs().sum() == 0 and cut.sum() == 64 - 16


def test_augmentation_is_differentiable():
    x = floats().requires_grad_(True)
    out = apply_params(x, draw_params(ALL_OPS, x.shape, torch.Generator().manual_seed(3)))
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_adaptive_probability_follows_the_sign_of_d_real():
    ada = AdaptiveProbability(p=0.0, target=0.6, interval_steps=4, ramp_images=100)
    ada.observe(torch.tensor([3.0, 2.0, 1.0, -1.0]))  # r_t = 0.5 <= 0.6: p stays at 0
    assert ada.count == 4 and float(ada.sign_sum) == 2.0
    ada.update(float(ada.sign_sum), ada.count)
    assert ada.p == 0.0 and ada.count == 0
    ada.update(40.0, 40)  # r_t = 1: D overfits, p up by 40 / 100
    assert ada.p == 0.4
    ada.update(-40.0, 40)
    assert ada.p == 0.0
    for _ in range(5):
        ada.update(40.0, 40)
    assert ada.p == 1.0
    copy = AdaptiveProbability(p=0.0, target=0.6, interval_steps=4, ramp_images=100)
    copy.load_state_dict(ada.state_dict())
    assert copy == ada


def test_train_step_shows_d_reals_and_fakes_through_the_same_augmentation(monkeypatch):
    """G is replaced by one that returns the real batch: then D's real input, its fake input in the
    D step and its fake input in the G step are equal only if the same parameters were applied."""
    from torch import nn

    from shardgan import train as train_module
    from shardgan.config import Config
    from shardgan.distributed import DistInfo
    from shardgan.state import build_state

    cfg = Config()
    cfg.data.translate_px, cfg.data.color_jitter = 0, 0.0
    cfg.model.width, cfg.model.height, cfg.model.nz, cfg.model.ngf, cfg.model.ndf = 16, 12, 8, 4, 4
    cfg.diffaugment.policy, cfg.diffaugment.probability = "translation,cutout,color", 1.0
    t = build_state(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    batch = images(8)

    class Copier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return to_float(batch) + self.w

    seen: list[tuple[str, torch.Tensor]] = []

    class Recorder(nn.Module):
        def __init__(self, name: str, d: nn.Module) -> None:
            super().__init__()
            self.name, self.d = name, d

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((self.name, x.detach().clone()))
            return self.d(x)

    t.g_run, t.d_run, t.d_local = Copier(), Recorder("d_step", t.d_run), Recorder("g_step", t.d_local)
    train_module.train_step(t, batch)
    assert [name for name, _ in seen] == ["d_step", "d_step", "g_step"]
    (_, real), (_, fake), (_, fake_in_g_step) = seen
    assert torch.equal(real, fake) and torch.equal(fake, fake_in_g_step)
    assert not torch.equal(real, to_float(batch)), "the policy should have changed the images"
    seen.clear()
    t.step += 1
    train_module.train_step(t, batch)
    assert not torch.equal(seen[0][1], real), "another step draws other parameters"
