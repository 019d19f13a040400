"""The original project's model_config.ini ([CONFIGS]) as a Config: `shardgan import-ini`."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

from .config import Config
from .configfile import build_config, did_you_mean, merge
from .errors import ConfigError

INI_KEYS = {
    "dataroot": ("data", "shards"),
    "workers": ("data", "num_workers"),
    "batch_size": ("data", "batch_size"),
    "image_width": ("model", "width"),
    "image_height": ("model", "height"),
    "num_channels": ("model", "channels"),
    "latent_vector_size": ("model", "nz"),
    "ngf": ("model", "ngf"),
    "ndf": ("model", "ndf"),
    "num_epochs": ("train", "epochs"),
    "lr": ("optim", "lr_g"),
    "beta1": ("optim", "beta1"),
    "output_dir": ("run", "root"),
}
"""The INI's keys -> (section, key) in shardgan's config."""


def import_ini(path: str | Path) -> Config:
    """Turn the original project's model_config.ini ([CONFIGS]) into a Config.

    `ngpu` has no equivalent (use torchrun --nproc_per_node); lr sets both lr_g and lr_d.
    """
    parser = configparser.ConfigParser()
    try:
        if not parser.read(path):
            raise ConfigError(f"INI file not found: {path}")
    except configparser.Error as e:
        raise ConfigError(f"{path}: invalid INI: {e}".splitlines()[0]) from None
    if "CONFIGS" not in parser:
        raise ConfigError(f"{path}: no [CONFIGS] section (the original project's model_config.ini has one)")
    updates: dict[str, dict[str, str]] = {}
    for key, value in parser["CONFIGS"].items():
        if key == "ngpu":
            continue
        if key not in INI_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}{did_you_mean(key, list(INI_KEYS))}")
        section, name = INI_KEYS[key]
        updates.setdefault(section, {})[name] = value
        if key == "lr":
            updates["optim"]["lr_d"] = value
    raw: dict[str, dict[str, Any]] = {}
    merge(raw, updates, str(path), text=True)
    return build_config(raw)
