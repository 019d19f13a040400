"""Models: the original project's parameter counts exactly, G/D shapes for many sizes, SN and EMA."""

from __future__ import annotations

import pytest
import torch

from shardgan.config import ModelConfig
from shardgan.configfile import load_config
from shardgan.errors import ConfigError
from shardgan.models import EMA, MinibatchStd, build_models, count_params, choose_layout, upsampling
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("preset", "g_params", "d_params"),
    [("gc7m", 4_338_560, 3_783_424), ("3ck2", 10_596_390, 5_906_880), ("y8q8", 3_576_704, 2_765_568)],
)
def test_preset_parameter_counts(preset: str, g_params: int, d_params: int) -> None:
    g, d = build_models(load_config(ROOT / "configs" / f"{preset}.toml").model, seed=0)
    assert (count_params(g), count_params(d)) == (g_params, d_params)


def test_original_layout_is_used_for_88x66() -> None:
    layout = choose_layout(88, 66)
    assert layout.g_kernels == ((4, 5), (4, 5), (4, 4), (5, 4), (4, 4))
    assert layout.d_kernels == ((4, 4), (3, 4), (3, 4), (5, 5), (4, 5))


@pytest.mark.parametrize(
    ("width", "height", "channels"),
    [(64, 64, 3), (88, 66, 3), (128, 96, 3), (160, 120, 3), (256, 144, 3), (64, 64, 1), (24, 16, 3), (8, 8, 1), (33, 17, 3), (90, 50, 1)],
)
@pytest.mark.parametrize("upsample", ["convtranspose", "nearest"])
def test_shapes_for_sizes(width: int, height: int, channels: int, upsample: str) -> None:
    cfg = ModelConfig(width=width, height=height, channels=channels, nz=8, ngf=4, ndf=4, upsample=upsample)
    g, d = build_models(cfg, seed=0)
    images = g(torch.randn(3, 8, 1, 1))
    assert images.shape == (3, channels, height, width)
    assert d(images).shape == (3,)


@pytest.mark.parametrize("kernel", [(4, 4), (5, 4), (4, 5)])
def test_nearest_upsampling_paints_no_checkerboard_where_a_transposed_convolution_does(kernel: tuple[int, int]) -> None:
    """A flat feature map stays flat through resize + 3x3 conv (away from the zero-padded border);
    a stride-2 transposed convolution with random weights turns it into a 2x2-periodic pattern."""
    torch.manual_seed(0)
    flat = torch.ones(1, 4, 6, 8)
    nearest, transposed = (torch.nn.Sequential(*upsampling(4, 2, kernel, mode)) for mode in ("nearest", "convtranspose"))
    a, b = nearest(flat), transposed(flat)
    assert a.shape == b.shape == (1, 2, 12 + kernel[0] - 4, 16 + kernel[1] - 4)
    inner_a, inner_b = a[..., 2:-2, 2:-2], b[..., 2:-2, 2:-2]
    assert torch.allclose(inner_a, inner_a[..., :1, :1].expand_as(inner_a), atol=1e-6)
    assert (inner_b.amax(dim=(-2, -1)) - inner_b.amin(dim=(-2, -1))).min() > 1e-3


def test_nearest_g_has_one_transposed_convolution_and_fewer_parameters() -> None:
    """Only the 1x1 -> start block layer stays transposed; 3x3 kernels instead of 4x4 on the way up."""
    cfg = ModelConfig(width=64, height=48, nz=8, ngf=4, ndf=4)
    g_t, _ = build_models(cfg, seed=0)
    cfg.upsample = "nearest"
    g_n, _ = build_models(cfg, seed=0)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in g_n.modules()) == 1
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in g_t.modules()) == len(choose_layout(64, 48).g_kernels)
    assert count_params(g_n) < count_params(g_t)
    with pytest.raises(ConfigError, match="model.upsample must be one of convtranspose, nearest"):
        ModelConfig(upsample="bilinear")


def test_spectral_norm_discriminator_has_no_batchnorm() -> None:
    g, d = build_models(ModelConfig(width=24, height=16, nz=8, ngf=4, ndf=4, spectral_norm=True), seed=0)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    assert sum(hasattr(m, "parametrizations") for m in d.modules()) == len(choose_layout(24, 16).d_kernels)


def test_d_without_batchnorm_has_the_same_convolutions_and_no_batchnorm() -> None:
    cfg = ModelConfig(width=24, height=16, nz=8, ngf=4, ndf=4)
    _, with_bn = build_models(cfg, seed=0)
    cfg.d_batchnorm = False
    _, without = build_models(cfg, seed=0)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in without.modules())
    convs = lambda d: [m.weight.shape for m in d.modules() if isinstance(m, torch.nn.Conv2d)]  # noqa: E731
    assert convs(with_bn) == convs(without)


def test_minibatch_std_is_each_groups_std_for_its_members_only() -> None:
    x = torch.randn(8, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    out = MinibatchStd(4)(x)
    assert out.shape == (8, 4, 2, 2) and torch.equal(out[:, :3], x)
    for i in range(2):  # groups are images i, i + 2, i + 4, i + 6 (StyleGAN2's strided grouping)
        members = x[i::2]
        expected = members.var(dim=0, unbiased=False).add(1e-8).sqrt().mean()
        assert torch.allclose(out[i::2, 3], expected.expand(4, 2, 2))
    copies = x[:1].expand(8, 3, 2, 2) + 1e-3 * x  # a collapsed batch: near-copies
    assert MinibatchStd(4)(copies)[:, 3].max() < 0.01 < out[:, 3].min()
    changed = x.clone()
    changed[1] += 5.0  # image 1 is in group 1: group 0's feature stays
    assert torch.equal(MinibatchStd(4)(changed)[0::2, 3], out[0::2, 3])
    assert not torch.equal(MinibatchStd(4)(changed)[1::2, 3], out[1::2, 3])


def test_minibatch_std_adds_one_input_map_to_ds_last_convolution() -> None:
    cfg = ModelConfig(width=24, height=16, nz=8, ngf=4, ndf=4, d_batchnorm=False, minibatch_std=2)
    g, d = build_models(cfg, seed=0)
    assert isinstance(d.main[-2], MinibatchStd) and d.main[-1].in_channels == d.main[-4].out_channels + 1
    assert d(g(torch.randn(6, 8, 1, 1))).shape == (6,)
    with pytest.raises(ConfigError, match="model.minibatch_std must be 0"):
        ModelConfig(minibatch_std=1)


def test_unbuildable_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="aspect ratio"):
        build_models(ModelConfig(width=512, height=16), seed=0)


def test_same_seed_same_weights_without_global_seeding() -> None:
    cfg = ModelConfig(width=24, height=16, nz=8, ngf=4, ndf=4, spectral_norm=True)
    a, b = build_models(cfg, seed=5), build_models(cfg, seed=5)
    torch.manual_seed(123)  # the global RNG must not matter
    c = build_models(cfg, seed=5)
    for x, y, z in zip(a, b, c):
        for (k, v), w, u in zip(x.state_dict().items(), y.state_dict().values(), z.state_dict().values()):
            assert torch.equal(v, w) and torch.equal(v, u), k
    other = build_models(cfg, seed=6)[0]
    assert not torch.equal(next(a[0].parameters()), next(other.parameters()))


def test_ema_moves_towards_model() -> None:
    g, _ = build_models(ModelConfig(width=16, height=16, nz=8, ngf=4, ndf=4), seed=0)
    ema = EMA(g, decay=0.5, stats_noise=torch.randn(8, 8, 1, 1))
    before = next(ema.model.parameters()).clone()
    with torch.no_grad():
        for p in g.parameters():
            p.add_(1.0)
    ema.update(g)
    assert torch.allclose(next(ema.model.parameters()), before + 0.5)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_spectral_norm_vectors_belong_to_the_initialized_weights() -> None:
    """u and v come from power iterations on the weights init_weights drew, not PyTorch's defaults:
    v is the normalized W^T u of the final weights, and u^T W v is close to W's largest singular value."""
    _, d = build_models(ModelConfig(width=24, height=16, nz=8, ngf=4, ndf=4, spectral_norm=True), seed=0)
    layers = [m for m in d.modules() if hasattr(m, "parametrizations")]
    assert layers
    for m in layers:
        sn = m.parametrizations.weight[0]
        matrix = m.parametrizations.weight.original.detach().flatten(1)
        torch.testing.assert_close(sn._v, torch.nn.functional.normalize(matrix.T @ sn._u, dim=0))
        sigma = torch.dot(sn._u, matrix @ sn._v)
        assert sigma == pytest.approx(torch.linalg.matrix_norm(matrix, ord=2).item(), rel=0.05)


def test_ema_batchnorm_statistics_belong_to_the_averaged_weights() -> None:
    """The averaged G normalizes with the statistics of its own first layer over the stats noise,
    not with G's (which belong to other weights), and recomputes them after each update."""
    g, _ = build_models(ModelConfig(width=16, height=16, nz=8, ngf=4, ndf=4), seed=0)
    noise = torch.randn(256, 8, 1, 1, generator=torch.Generator().manual_seed(1))
    ema = EMA(g, decay=0.5, stats_noise=noise)
    for shift in (0.3, -0.2):
        with torch.no_grad():
            for p in g.parameters():
                p.add_(shift)
            g.train()(torch.randn(16, 8, 1, 1))  # moves G's own running statistics
        ema.update(g)
        model = ema.compute_averaged()
        assert not model.training
        first_conv, first_norm = model.main[0], model.main[1]
        with torch.no_grad():
            features = first_conv(noise)
        torch.testing.assert_close(first_norm.running_mean, features.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(first_norm.running_mean, g.main[1].running_mean, atol=1e-3)
        assert first_norm.momentum == g.main[1].momentum  # restored after the cumulative average
    ema.load_state_dict(g.state_dict())  # G's weights with G's statistics: recomputed at the next read
    with torch.no_grad():
        features = ema.compute_averaged().main[0](noise)
    torch.testing.assert_close(ema.compute_averaged().main[1].running_mean, features.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
