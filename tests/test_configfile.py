"""Config from text: presets load, precedence CLI > TOML > defaults, typos refused with a
suggestion, TOML written back, and the old [augment] section loaded as [diffaugment]."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shardgan.config import Config
from shardgan.configfile import config_from_dict, load_config, to_toml
from shardgan.errors import ConfigError
from tests.conftest import PYTHON, ROOT

PRESETS = sorted((ROOT / "configs").glob("*.toml"))
TINY = ROOT / "configs" / "tiny.toml"


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


def old_section_name(text: str) -> str:
    """A config as written before [diffaugment] was called [augment]."""
    assert "[diffaugment]" in text
    return text.replace("[diffaugment]", "[augment]")


def test_the_old_augment_section_loads_as_diffaugment(tmp_path: Path) -> None:
    old = tmp_path / "tiny.toml"
    old.write_text(old_section_name(TINY.read_text()))
    cfg = load_config(old)
    assert cfg == load_config(TINY)
    assert cfg.diffaugment.policy == "translation,cutout,color" and cfg.diffaugment.ada_target == 0.6
    assert "[augment]" not in to_toml(cfg) and "[diffaugment]" in to_toml(cfg)  # written back under the new name
    overridden = load_config(TINY, ["augment.probability=0.25", "augment.policy=color"])
    assert overridden == load_config(TINY, ["diffaugment.probability=0.25", "diffaugment.policy=color"])
    assert (overridden.diffaugment.probability, overridden.diffaugment.policy) == (0.25, "color")


def test_a_key_given_under_both_section_names_is_refused_in_one_line(tmp_path: Path) -> None:
    both = tmp_path / "both.toml"
    both.write_text('[augment]\npolicy = "color"\n[diffaugment]\npolicy = "cutout"\n')
    with pytest.raises(ConfigError, match=r"diffaugment.policy is given twice, as augment.policy too; keep only diffaugment.policy") as err:
        load_config(both)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="given twice"):
        load_config(None, ["diffaugment.policy=color", "augment.policy=cutout"])
    both.write_text('[augment]\npolicy = "color"\n[diffaugment]\nprobability = 0.5\n')  # different keys: both taken
    assert (load_config(both).diffaugment.policy, load_config(both).diffaugment.probability) == ("color", 0.5)
    assert load_config(TINY, ["augment.policy=color"]).diffaugment.policy == "color"  # the command line still beats the file


def test_a_checkpoints_config_from_before_the_rename_loads() -> None:
    """Checkpoints store cfg.to_dict(); those written before the rename hold an "augment" table."""
    cfg = load_config(TINY, ["diffaugment.probability=0.3", "train.seed=7"])
    stored = {("augment" if name == "diffaugment" else name): table for name, table in cfg.to_dict().items()}
    assert "diffaugment" not in stored and stored["augment"]["probability"] == 0.3
    assert config_from_dict(stored) == cfg
    assert config_from_dict(stored, overrides=["diffaugment.policy=color"]).diffaugment.policy == "color"


@pytest.mark.multiproc
def test_the_rename_is_said_in_one_line_once_per_process(tmp_path: Path) -> None:
    """An old file, an old override and an old checkpoint config in one process: one warning line,
    naming both names; a process that meets only new names says nothing."""
    old = tmp_path / TINY.name  # the same run.name
    old.write_text(old_section_name(TINY.read_text()))
    script = (
        "import sys\n"
        "from shardgan.configfile import config_from_dict, load_config\n"
        "new = load_config(sys.argv[2])\n"
        "if sys.argv[1] == 'old':\n"
        "    stored = {('augment' if k == 'diffaugment' else k): v for k, v in new.to_dict().items()}\n"
        "    assert load_config(sys.argv[3], ['augment.probability=0.5']) == config_from_dict(stored) == new  # tiny's p: 0.5\n"
    )
    said = subprocess.run([PYTHON, "-c", script, "old", str(TINY), str(old)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert said.returncode == 0, said.stderr
    assert said.stderr.splitlines() == ["[augment] is now [diffaugment]: augment.KEY still loads as diffaugment.KEY; rename it in config files and overrides"]
    quiet = subprocess.run([PYTHON, "-c", script, "new", str(TINY)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (quiet.returncode, quiet.stderr) == (0, "")
