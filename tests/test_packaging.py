"""Honest packaging: ranges in pyproject.toml for installing into an existing environment, the
exact versions `make` installs in constraints.txt, and the Python floor the code really needs."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import ROOT


def test_library_declares_ranges_and_constraints_pin_them() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE))
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group()
        assert "==" not in requirement, f"{requirement}: an exact pin belongs in constraints.txt"
        assert name in pins, f"{name} is not pinned in constraints.txt"


def test_python_floor_matches_the_code() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"  # tomllib (config.py) is in the standard library from 3.11
