"""Config sections: every key range-checked in one line naming it, and documented."""

from __future__ import annotations

import re

import pytest

from shardgan.config import Config, parse_bytes
from shardgan.configfile import load_config
from shardgan.errors import ConfigError
from tests.conftest import ROOT

OUT_OF_RANGE: dict[str, str | None] = {
    # a value each key refuses; None: every value of the type is allowed here (names, paths,
    # switches), and a bad one is refused where it is used (a missing file, an unknown split)
    "data.shards": None, "data.manifest": None, "data.cache_dir": None, "data.cache_limit": "lots",
    "data.prefetch_shards": "-1", "data.read_ahead": "-1", "data.fetch_attempts": "0", "data.fetch_backoff_s": "-1", "data.fetch_timeout_s": "0",
    "data.split": None, "data.batch_size": "0", "data.num_workers": "-1", "data.seed": "-1", "data.canonical_nodes": "-1", "data.on_corrupt": "ignore",
    "data.pin_memory": None, "data.prefetch_factor": "0", "data.progress_every_s": "-1", "data.decode_device": "gpu", "data.translate_px": "-1", "data.color_jitter": "-0.1", "data.hflip": None,
    "model.width": "7", "model.height": "4", "model.channels": "2", "model.nz": "0", "model.ngf": "0", "model.ndf": "0",
    "model.loss": "wgan", "model.upsample": "bilinear", "model.spectral_norm": None, "model.d_batchnorm": None, "model.minibatch_std": "1",
    "optim.lr_g": "0", "optim.lr_d": "-1", "optim.beta1": "1.0", "optim.beta2": "-0.5",
    "optim.r1_gamma": "-0.1", "optim.r2_gamma": "-1", "optim.penalty_every_steps": "0", "optim.decay_steps": "-1", "optim.lr_final": "0", "optim.gamma_final": "1.5",
    "train.epochs": "0", "train.max_steps": "-1", "train.seed": str(2**63), "train.device": "gpu", "train.precision": "fp16",
    "train.channels_last": None, "train.compile": None, "train.ema_decay": "1.0", "train.log_every_steps": "0",
    "train.sample_every_steps": "-1", "train.collapse_logs": "-1", "train.collapse_evals": "-1", "train.collapse_after_steps": "-1", "train.sample_at_epoch_end": None, "train.deterministic": None,
    "train.collective_timeout_s": "0.5", "train.backend": "mpi",
    "diffaugment.policy": "zoom", "diffaugment.probability": "1.5", "diffaugment.translation_ratio": "0", "diffaugment.cutout_ratio": "1",
    "diffaugment.ada_target": "1", "diffaugment.ada_interval_steps": "0", "diffaugment.ada_ramp_images": "0",
    "checkpoint.every_steps": "-1", "checkpoint.every_minutes": "-1", "checkpoint.at_epoch_end": None, "checkpoint.keep_last": "0",
    "checkpoint.resume": "", "checkpoint.allow_config_change": None,
    "run.root": None, "run.name": None,
    "eval.every_steps": "-1", "eval.num_images": "1", "eval.swd_mode": "fast", "eval.fid_weights": None,
}  # fmt: skip


def test_every_config_key_is_range_checked() -> None:
    """Each key refuses a value out of its range in one line naming it, so a typo or an impossible
    value stops at start-up; the table must list every key, so a new one cannot skip this."""
    assert sorted(OUT_OF_RANGE) == sorted(f"{s}.{k}" for s, table in Config().to_dict().items() for k in table)
    for key, bad in OUT_OF_RANGE.items():
        if bad is not None:
            with pytest.raises(ConfigError) as refused:
                load_config(None, [f"{key}={bad}"])
            section, name = key.split(".")
            message = str(refused.value)
            assert f"{section}." in message and name in message and "\n" not in message, (key, message)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.log_every_steps=0", "train.log_every_steps must be >= 1"),
        ("checkpoint.every_minutes=-1", "every_minutes must be >= 0"),
        ("optim.beta1=1.0", "beta1 and optim.beta2 must be in"),
        ("data.seed=-1", r"data.seed must be in \[0, 2\*\*63\)"),
        ("train.device=gpu", "train.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ],
)
def test_range_errors_say_the_range(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    assert load_config(None, ["train.device=cuda:1", "train.seed=0", f"data.seed={2**63 - 1}"]).train.device == "cuda:1"


def test_every_config_key_has_a_docstring() -> None:
    """`--dry-run` users and config.py readers learn each key from the line below it."""
    import ast

    tree = ast.parse((ROOT / "shardgan" / "config.py").read_text())
    missing = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Config") and n.name != "Config"):
        for field, after in zip(cls.body, [*cls.body[1:], None]):
            documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)
            if isinstance(field, ast.AnnAssign) and not documented:
                missing.append(f"{cls.name}.{field.target.id}")
    assert missing == []


def test_cache_limit_takes_a_size_with_a_unit() -> None:
    assert load_config(None, ["data.cache_limit=200GB"]).data.cache_limit_bytes == 200 * 10**9
    assert load_config(None, ["data.cache_limit=1.5GiB"]).data.cache_limit_bytes == 3 * 2**29
    assert load_config(None).data.cache_limit_bytes is None  # auto: from the cache disk's free space
    assert load_config(None, ["data.cache_limit=0"]).data.cache_limit_bytes == 0  # no limit
    for bad in ("lots", "-1GB", "5XB"):
        with pytest.raises(ConfigError, match=f"data.cache_limit: expected a size like 200GB, 1.5GiB or 1000000, got '{bad}'"):
            load_config(None, [f"data.cache_limit={bad}"])


def test_one_byte_size_parser_for_keys_and_flags() -> None:
    """config.data.cache_limit and pack's --shard-size read sizes alike; whoever needs > 0 checks that."""
    assert parse_bytes("256MB", "--shard-size") == 256_000_000 and parse_bytes("1GiB", "x") == 2**30 and parse_bytes("1000", "x") == 1000
    assert parse_bytes("2TB", "x") == 2 * 10**12 and parse_bytes(" 1.5 gib ", "x") == 3 * 2**29 and parse_bytes("0", "x") == 0
    for bad in ("12 parsecs", "-1GB", "inf", "nan", "1e3", ""):
        with pytest.raises(ConfigError, match=re.escape(f"--shard-size: expected a size like 200GB, 1.5GiB or 1000000, got {bad!r}")):
            parse_bytes(bad, "--shard-size")
