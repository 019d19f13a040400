"""The training state: models, optimizers and noise built from the seed alone, complete when built
(wrapped for the run), and the size check between shards and model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from shardgan.distributed import DistInfo, LateAgreement
from shardgan.errors import ConfigError
from shardgan.rng import NOISE, derived_generator
from shardgan.state import NUM_FIXED_NOISE, build_state, choose_kernels, open_loader, total_steps
from tests.conftest import build_dataset
from tests.trainer_runs import tiny_config

ALONE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_the_same_seed_builds_the_same_state_without_global_seeding() -> None:
    cfg = tiny_config()
    torch.manual_seed(1)
    a = build_state(cfg, ALONE)
    torch.manual_seed(2)
    b = build_state(cfg, ALONE)
    assert all(torch.equal(x, y) for x, y in zip(a.g.state_dict().values(), b.g.state_dict().values()))
    assert torch.equal(a.fixed_noise, b.fixed_noise) and a.fixed_noise.shape == (NUM_FIXED_NOISE, 8, 1, 1)
    cfg.train.seed, cfg.train.ema_decay = 1, 0.0
    c = build_state(cfg, ALONE)
    assert not torch.equal(c.fixed_noise, a.fixed_noise) and c.ema is None and c.sampler() is c.g
    assert a.sampler() is a.ema.model


def test_fixed_sample_noise_has_a_stream_no_rank_trains_with() -> None:
    cfg = tiny_config()
    fixed = build_state(cfg, ALONE).fixed_noise.flatten(1)  # (64, nz)
    for rank in range(16):
        z = torch.randn(8, cfg.model.nz, generator=derived_generator(0, rank, 0, NOISE))
        assert not torch.equal(z, fixed[:8]), f"fixed noise equals rank {rank}'s training noise at step 0"


def test_precision_and_wrapping_on_the_cpu() -> None:
    cfg = tiny_config()
    t = build_state(cfg, ALONE)  # complete as built: nothing to call before a step
    assert t.g_run is t.g and t.d_run is t.d_local is t.d  # one process: no DDP
    assert t.memory_format == torch.contiguous_format  # channels_last is for CUDA only
    with t.autocast():
        assert not torch.is_autocast_enabled("cpu")  # auto on the CPU: fp32
    cfg.train.precision = "bf16"
    with t.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def test_deterministic_mode_chooses_deterministic_fp32_kernels_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    backends = torch.backends
    for name in ("benchmark", "deterministic", "allow_tf32"):
        monkeypatch.setattr(backends.cudnn, name, getattr(backends.cudnn, name))  # restored after the test
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    mode: list[bool] = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", mode.append)
    matmul_tf32 = backends.cuda.matmul.allow_tf32  # a setting monkeypatch cannot restore
    try:
        choose_kernels(True, torch.device("cuda", 0))
        assert (backends.cudnn.deterministic, backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32) == (True, False, False, False)
        assert mode == [True] and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        choose_kernels(False, torch.device("cuda", 0))
        assert (backends.cudnn.deterministic, backends.cudnn.benchmark, backends.cudnn.allow_tf32) == (False, True, True) and mode == [True, False]
        choose_kernels(True, torch.device("cpu"))  # the CPU is deterministic as it is: nothing changes
        assert mode == [True, False]
    finally:
        backends.cuda.matmul.allow_tf32 = matmul_tf32


def test_compile_wraps_the_ddp_modules_so_the_all_reduce_overlaps_the_backward(tmp_path: Path) -> None:
    import torch.distributed as torch_dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cfg = tiny_config()
        cfg.train.compile = True
        t = build_state(cfg, DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu")))  # the DDP path, taken when built
        assert isinstance(t.g_run._orig_mod, DDP) and isinstance(t.d_run._orig_mod, DDP)
        assert t.g_run._orig_mod.module is t.g and t.d_local._orig_mod is t.d  # the G step's D: compiled, no DDP
    finally:
        torch_dist.destroy_process_group()


def test_losses_are_fp32_under_bf16_autocast() -> None:
    from shardgan.train import train_step

    cfg = tiny_config()
    cfg.model.loss, cfg.train.precision = "hinge", "bf16"
    t = build_state(cfg, ALONE)
    stats = train_step(t, torch.randint(0, 256, (8, 3, 16, 24), dtype=torch.uint8))
    assert stats["loss_d"].dtype == stats["loss_g"].dtype == torch.float32
    with t.autocast():
        assert t.d(torch.zeros(2, 3, 16, 24)).dtype == torch.float32  # D's logits too


def test_the_loader_must_hold_images_of_the_models_size(tmp_path: Path) -> None:
    build_dataset(tmp_path / "shards", [10, 6], width=24, height=16)
    cfg = tiny_config()
    cfg.data.shards, cfg.data.batch_size = str(tmp_path / "shards"), 4
    loader = open_loader(cfg, ALONE)
    assert total_steps(cfg, loader) == cfg.train.epochs * 4  # 16 samples: 4 batches per epoch
    cfg.train.max_steps = 7
    assert total_steps(cfg, loader) == 7
    taller = tiny_config(height=20)
    taller.data = cfg.data
    with pytest.raises(ConfigError, match=r"model is 24x20x3 but the shards in .* are 24x16x3; set model.width/height/channels"):
        open_loader(taller, ALONE)


@pytest.mark.gpu
def test_a_cuda_state_steps_in_bf16_channels_last_and_its_flags_are_read_one_step_late() -> None:
    from shardgan.train import train_step

    cfg = tiny_config()
    world = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))
    t = build_state(cfg, world)
    assert t.memory_format == torch.channels_last and t.g.main[0].weight.is_cuda
    images = torch.randint(0, 256, (8, 3, 16, 24), dtype=torch.uint8)
    stats = train_step(t, images)
    assert all(torch.isfinite(v).all() for v in stats.values()) and stats["loss_d"].is_cuda
    agreement = LateAgreement(world.device)
    bad = ~torch.isfinite(stats["loss_d"])
    assert agreement.push(0, bad, [False]) is None and agreement.now() == (0, [False, False])  # finite, read one step late
