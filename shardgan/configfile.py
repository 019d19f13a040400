"""Config from text: defaults < TOML file < `section.key=value` overrides, and back to TOML.

Unknown keys and wrong types are refused with a did-you-mean, so a typo never silently trains
with a default. A renamed section still loads under its old name (RENAMED_SECTIONS), from a
file, an override or a checkpoint's stored config, and a warning says so once per process.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import tomllib
import typing
from pathlib import Path
from typing import Any

from .config import Config
from .errors import ConfigError

log = logging.getLogger("shardgan")

RENAMED_SECTIONS = {"augment": "diffaugment"}
"""Old section name -> new one. [augment] was DiffAugment's section (data.translate_px,
color_jitter and hflip are the other, reals-only augmentation); checkpoints store it."""


@functools.cache
def _renamed(old: str) -> str:
    """The new name of section `old`; the first time in a process, a warning says it changed."""
    new = RENAMED_SECTIONS[old]
    log.warning("[%s] is now [%s]: %s.KEY still loads as %s.KEY; rename it in config files and overrides", old, new, old, new)
    return new


def did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(where: str, value: Any, target: type, text: bool) -> Any:
    """Check a TOML value's type, or parse command-line `text` into the field's type; say why not.
    TOML has types of its own, so `hflip = "yes"` or `width = "64"` there is refused, not guessed."""
    if text and isinstance(value, str) and target is not str:
        text = value.strip()
        if target is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        try:
            return target(text)
        except ValueError:
            raise ConfigError(f"{where}: expected {target.__name__}, got {value!r}") from None
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not target:
        raise ConfigError(f"{where}: expected {target.__name__}, got {type(value).__name__} {value!r}")
    return value


def merge(raw: dict[str, dict[str, Any]], updates: dict[str, Any], origin: str, text: bool = False) -> None:
    """Check `updates` ({section: {key: value}}, from `origin`) against Config's fields and write
    them into `raw`; `text`: values are command-line strings, parsed into the fields' types."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    given: set[tuple[str, str]] = set()
    for name, table in updates.items():
        name = _renamed(name) if name in RENAMED_SECTIONS else name
        if name not in sections:
            raise ConfigError(f"{origin}: unknown section [{name}]{did_you_mean(name, list(sections))}")
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [{name}] must be a table of keys")
        hints = typing.get_type_hints(typing.get_type_hints(Config)[name])
        for key, value in table.items():
            if key not in hints:
                raise ConfigError(f"{origin}: unknown key {name}.{key}{did_you_mean(key, list(hints))}")
            if (name, key) in given:  # only a renamed section can give a key twice
                old = next(o for o, n in RENAMED_SECTIONS.items() if n == name)
                raise ConfigError(f"{origin}: {name}.{key} is given twice, as {old}.{key} too; keep only {name}.{key}")
            given.add((name, key))
            raw.setdefault(name, {})[key] = _coerce(f"{origin}: {name}.{key}", value, hints[key], text)


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """`["train.batch_size=256"]` -> `{"train": {"batch_size": "256"}}` (types checked later)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. data.batch_size=256")
        out.setdefault(section, {})[name] = value
    return out


def build_config(raw: dict[str, dict[str, Any]]) -> Config:
    hints = typing.get_type_hints(Config)
    return Config(**{name: hints[name](**raw.get(name, {})) for name in hints})


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file, then overrides; every key validated."""
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        path = Path(path)
        try:
            with path.open("rb") as f:
                table = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
        merge(raw, table, str(path))
    merge(raw, parse_overrides(overrides or []), "command line", text=True)
    cfg = build_config(raw)
    if not cfg.run.name:
        cfg.run.name = path.stem if path is not None else "default"
    return cfg


def config_from_dict(table: dict[str, dict[str, Any]], origin: str = "checkpoint", overrides: list[str] | None = None) -> Config:
    """A config saved as a dict (in a checkpoint), with `section.key=value` overrides on top."""
    raw: dict[str, dict[str, Any]] = {}
    merge(raw, table, origin)
    merge(raw, parse_overrides(overrides or []), "command line", text=True)
    return build_config(raw)


def to_toml(cfg: Config) -> str:
    """Serialize to TOML (flat sections of scalars, so a tiny writer suffices)."""
    lines: list[str] = []
    for section, table in cfg.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {json.dumps(value)}" if not isinstance(value, bool) else f"{key} = {str(value).lower()}")
        lines.append("")
    return "\n".join(lines)
