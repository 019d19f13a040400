"""The Makefile's variables, read through `make -n` (what would run, nothing run)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT


def planned(*variables: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"MAKELEVEL", "MAKEFLAGS", "MFLAGS"}}
    return subprocess.run(["make", "-n", "train", *variables], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize(
    ("variables", "shards"),
    [
        ((), "data/demo_shards"),
        (("DATA=/frames/sm64",), "data/sm64_shards"),
        (("DATA=/frames/sm64/",), "data/sm64_shards"),
        (("DATA=/frames/sm64", "SHARDS=/fast/sm64"), "/fast/sm64"),
    ],
)
def test_your_frames_never_pack_into_the_demos_shards(variables: tuple[str, ...], shards: str) -> None:
    pack = next(line for line in planned(*variables).splitlines() if " pack " in line)
    assert pack.split(" pack ")[1].split()[1] == shards
    assert f"data.shards={shards}" in planned(*variables)
