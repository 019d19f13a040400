"""Honest packaging: ranges in pyproject.toml for installing into an existing environment, the
exact versions `make` installs in constraints.txt, and the Python floor the code really needs."""

from __future__ import annotations

import ast
import re
import tomllib

from tests.conftest import ROOT

NEWER_STDLIB = {"graphlib": (3, 9), "zoneinfo": (3, 9), "tomllib": (3, 11)}
"""Standard-library modules added after Python 3.8, with the version that added them (one newer than
the Python these tests run on could not be imported by code that passes them)."""


def test_library_declares_ranges_and_constraints_pin_them() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE))
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group()
        assert "==" not in requirement, f"{requirement}: an exact pin belongs in constraints.txt"
        assert name in pins, f"{name} is not pinned in constraints.txt"


def test_python_floor_matches_the_code() -> None:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = re.fullmatch(r">=\s*3\.(\d+)", spec)
    assert floor, f"requires-python = {spec!r}: expected a floor, >=3.N"
    needed = needed_python()
    assert (3, int(floor[1])) == needed, f"requires-python = {spec!r}, but the code needs Python {needed[0]}.{needed[1]}"


def needed_python() -> tuple[int, int]:
    """The oldest Python whose grammar parses every shardgan module (as far as `ast`'s
    feature_version tells) and whose standard library has every module shardgan imports."""
    sources = [p.read_text() for p in sorted((ROOT / "shardgan").rglob("*.py"))]
    imported = set()
    for node in (n for source in sources for n in ast.walk(ast.parse(source))):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    library = max([(3, 8)] + [version for module, version in NEWER_STDLIB.items() if module in imported])
    return max(library, next(v for v in ((3, minor) for minor in range(8, 14)) if _parse_all(sources, v)))


def _parse_all(sources: list[str], version: tuple[int, int]) -> bool:
    """Every source parses with the grammar of `version`."""
    try:
        for source in sources:
            ast.parse(source, feature_version=version)
    except SyntaxError:
        return False
    return True
