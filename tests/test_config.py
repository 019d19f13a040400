"""Config: presets load, precedence CLI > TOML > defaults, typos refused with a suggestion, INI import."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shardgan.config import Config, config_from_dict, import_ini, load_config, parse_bytes, to_toml
from shardgan.errors import ConfigError
from tests.conftest import ROOT

PRESETS = sorted((ROOT / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_presets_load_and_round_trip(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    out = tmp_path / "again.toml"
    out.write_text(to_toml(cfg))
    assert load_config(out) == cfg


def test_precedence_defaults_toml_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[data]\nbatch_size = 32\nnum_workers = 3\n[optim]\nlr_g = 1\n")
    cfg = load_config(path, ["data.batch_size=256"])
    assert cfg.data.batch_size == 256  # command line beats the file
    assert cfg.data.num_workers == 3  # file beats the default
    assert cfg.optim.lr_g == 1.0 and isinstance(cfg.optim.lr_g, float)
    assert cfg.train.seed == Config().train.seed  # untouched default


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.batch_size=8"], "unknown key train.batch_size"),
        (["data.batch_sise=8"], "did you mean 'batch_size'"),
        (["trian.seed=1"], "did you mean 'train'"),
        (["data.batch_size=eight"], "expected int"),
        (["train.compile=maybe"], "expected true/false"),
        (["model.loss=wasserstein"], "model.loss"),
        (["noequals"], "section.key=value"),
    ],
)
def test_bad_overrides_are_one_line_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('[data]\nhflip = "yes"', "data.hflip: expected bool, got str 'yes'"),
        ('[model]\nwidth = "64"', "model.width: expected int, got str '64'"),
        ("[optim]\nlr_g = true", "optim.lr_g: expected float, got bool"),
    ],
)
def test_toml_values_are_not_coerced(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    assert load_config(None, ["data.hflip=yes", "model.width=64"]).data.hflip is True  # command-line text is parsed


OUT_OF_RANGE: dict[str, str | None] = {
    # a value each key refuses; None: every value of the type is allowed here (names, paths,
    # switches), and a bad one is refused where it is used (a missing file, an unknown split)
    "data.shards": None, "data.manifest": None, "data.cache_dir": None, "data.cache_limit": "lots",
    "data.prefetch_shards": "-1", "data.fetch_attempts": "0", "data.fetch_backoff_s": "-1", "data.fetch_timeout_s": "0",
    "data.split": None, "data.batch_size": "0", "data.num_workers": "-1", "data.seed": "-1", "data.canonical_nodes": "-1", "data.on_corrupt": "ignore",
    "data.pin_memory": None, "data.prefetch_factor": "0", "data.progress_every_s": "-1", "data.decode_device": "gpu", "data.translate_px": "-1", "data.color_jitter": "-0.1", "data.hflip": None,
    "model.width": "7", "model.height": "4", "model.channels": "2", "model.nz": "0", "model.ngf": "0", "model.ndf": "0",
    "model.loss": "wgan", "model.spectral_norm": None, "model.d_batchnorm": None, "model.minibatch_std": "1",
    "optim.lr_g": "0", "optim.lr_d": "-1", "optim.beta1": "1.0", "optim.beta2": "-0.5",
    "optim.r1_gamma": "-0.1", "optim.r2_gamma": "-1", "optim.penalty_every_steps": "0",
    "train.epochs": "0", "train.max_steps": "-1", "train.seed": str(2**63), "train.device": "gpu", "train.precision": "fp16",
    "train.channels_last": None, "train.compile": None, "train.ema_decay": "1.0", "train.log_every_steps": "0",
    "train.sample_every_steps": "-1", "train.collapse_logs": "-1", "train.collapse_evals": "-1", "train.sample_at_epoch_end": None, "train.deterministic": None,
    "train.collective_timeout_s": "0.5", "train.backend": "mpi",
    "augment.policy": "zoom", "augment.probability": "1.5", "augment.translation_ratio": "0", "augment.cutout_ratio": "1",
    "augment.ada_target": "1", "augment.ada_interval_steps": "0", "augment.ada_ramp_images": "0",
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


def test_run_name_defaults_to_the_config_files_name() -> None:
    assert load_config(ROOT / "configs" / "gc7m.toml").run.name == "gc7m"
    assert load_config(None).run.name == "default"
    assert load_config(ROOT / "configs" / "gc7m.toml", ["run.name=mine"]).run.name == "mine"


def test_wrong_type_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[model]\nwidth = "wide"\n')
    with pytest.raises(ConfigError, match=r"model.width: expected int"):
        load_config(path)


def test_config_from_checkpoint_dict_round_trip() -> None:
    cfg = load_config(ROOT / "configs" / "gc7m.toml", ["train.seed=7"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_import_original_ini(tmp_path: Path) -> None:
    ini = tmp_path / "model_config.ini"
    ini.write_text(
        "[CONFIGS]\ndataroot = /data/sm64\noutput_dir = output\nimage_width = 88\nimage_height = 66\n"
        "num_channels = 3\nworkers = 2\nngpu = 1\nnum_epochs = 1000\nbatch_size = 128\nlr = 0.0002\n"
        "beta1 = 0.5\nlatent_vector_size = 100\nngf = 64\nndf = 64\n"
    )
    cfg = import_ini(ini)
    gc7m = load_config(ROOT / "configs" / "gc7m.toml")
    assert cfg.model == gc7m.model
    assert (cfg.optim.lr_g, cfg.optim.lr_d, cfg.optim.beta1) == (2e-4, 2e-4, 0.5)
    assert (cfg.data.shards, cfg.data.batch_size, cfg.train.epochs, cfg.run.root) == ("/data/sm64", 128, 1000, "output")


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
