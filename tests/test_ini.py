"""The original project's model_config.ini imported as a Config, and its errors in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardgan.configfile import load_config
from shardgan.errors import ConfigError
from shardgan.ini import import_ini
from tests.conftest import ROOT


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




@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[CONFIGS]\nimage_widht = 88\n", r"unknown key 'image_widht' \(did you mean 'image_width'\?\)"),
        ("[OTHER]\nngf = 64\n", r"no \[CONFIGS\] section"),
        ("[CONFIGS]\nimage_width = wide\n", "model.width: expected int, got 'wide'"),
        ("[CONFIGS\n", "invalid INI"),
    ],
)
def test_a_bad_ini_is_one_line_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    ini = tmp_path / "model_config.ini"
    ini.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        import_ini(ini)
    assert str(err.value).startswith(str(ini)) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="INI file not found"):
        import_ini(tmp_path / "missing.ini")
