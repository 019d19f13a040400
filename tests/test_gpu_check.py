"""tools/gpu_check.sh --cpu-dry-run: every part of the GPU check runs, with tiny sizes, on the
CPU, so the script a GPU session runs in its few minutes cannot rot before a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT

PARTS = ("versions", "pytest_gpu", "syncs", "speed", "loop", "exact", "swd", "loader", "pack")


@pytest.mark.slow
@pytest.mark.multiproc
def test_the_gpu_check_dry_run_passes_every_part_and_writes_one_tarball(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": PYTHON, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--cpu-dry-run"], env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.rindex("\n{") :])
    assert {part: summary[part] for part in PARTS} == dict.fromkeys(PARTS, "ok"), done.stdout[-4000:]
    assert summary["dry_run"] is True
    assert summary["exact_figures"]["exact"]["deterministic"]["bit_identical"] is True  # on the CPU, both modes are exact
    assert summary["exact_figures"]["exact"]["default"]["bit_identical"] is True
    assert summary["syncs_figures"]["syncs"]["cpu_ops_per_step"] > 0 and summary["swd_figures"]["swd"]["n16"]["ms_per_image"] > 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["gpu_check.tar.gz"]
    with tarfile.open(tmp_path / "out" / "gpu_check.tar.gz") as tar:
        assert {"gpu_check/summary.json", "gpu_check/speed.txt", "gpu_check/exact.txt"} <= set(tar.getnames())
