"""Trainer test runs shared by tests/test_train.py and tests/faults/test_train_faults.py
(a pytest plugin, so the session fixtures below are computed once per session).

All runs use configs/tiny.toml (24x16 frames, ngf=ndf=8, DiffAugment with ADA on) on real
shards for STEPS steps, crossing two epoch ends. Every run uses one intra-op thread, so float reductions happen in
the same order in the pytest process, in `python -m` subprocesses and under torchrun.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from shardgan import checkpoint as ckpt
from shardgan.cli import main
from shardgan.config import Config
from shardgan.resume import AUGMENT_STATE
from tests.conftest import PYTHON, ROOT, build_dataset

CONFIG = ROOT / "configs" / "tiny.toml"
STEPS = 40
"""15 batches per epoch: 40 steps cross two epoch ends, and stops mid-epoch."""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TORCHRUN = [str(Path(PYTHON).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "--signals_to_handle=SIGTERM,SIGINT,SIGUSR1"]
INJECT = ROOT / "tests" / "faults" / "inject"
"""The fault-injection sitecustomize the fault tests put on PYTHONPATH (see its docstring)."""
COMPARED = (ckpt.G, ckpt.D, ckpt.EMA, ckpt.OPT_G, ckpt.OPT_D, ckpt.STEP, ckpt.LOADER, ckpt.FIXED_NOISE, AUGMENT_STATE)


def tiny_config(**model: int) -> Config:
    """A 24x16 model, 8 latents, 4 filters a layer, for trainers built in the test process; `model`
    overrides other model fields."""
    cfg = Config()
    cfg.model.width, cfg.model.height, cfg.model.nz, cfg.model.ngf, cfg.model.ndf = 24, 16, 8, 4, 4
    for key, value in model.items():
        setattr(cfg.model, key, value)
    return cfg


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny") / "shards"
    build_dataset(directory, [40, 37, 50], width=24, height=16)  # 127 samples: 15 batches of 8
    return directory


def train_args(shards: Path, run: Path, *extra: str) -> list[str]:
    """Arguments for `python -m shardgan.train` / `main()` training the tiny preset into `run`."""
    return [
        "--config", str(CONFIG), f"data.shards={shards}", f"run.root={run.parent}", f"run.name={run.name}",
        f"train.max_steps={STEPS}", "checkpoint.every_steps=5", "checkpoint.keep_last=3", "train.sample_every_steps=10",
        *extra,
    ]  # fmt: skip


def train_inprocess(shards: Path, run: Path, *extra: str) -> int:
    with one_thread():
        return main(["train", *train_args(shards, run, *extra)])


def refused_resume(shards: Path, straight: Path, run: Path, capsys: pytest.CaptureFixture, *extra: str) -> str:
    """Resume a copy of the straight run with `extra`, which must be refused: exit 2, one
    `error:` line (returned), and no checkpoint written or removed."""
    shutil.copytree(straight, run)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert train_inprocess(shards, run, *extra, "train.max_steps=50") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    return err


def newest(run: Path) -> dict[str, Any]:
    found = ckpt.load_newest(run / "checkpoints")
    assert found is not None, f"no checkpoint in {run}"
    return found[0]


def newest_step(run: Path) -> int:
    paths = [p for p in ckpt.list_checkpoints(run / "checkpoints") if p.with_suffix(".json").exists()]
    return int(paths[0].stem.split("_")[1]) if paths else 0


def assert_same_state(a: dict[str, Any], b: dict[str, Any], where: str = "") -> None:
    """Every tensor and number of the compared keys is bit-identical."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"differs at {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"keys differ at {where}"
        for k in a:
            assert_same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"lengths differ at {where}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"differs at {where}: {a!r} != {b!r}"


def assert_same_final(a: Path, b: Path, steps: int = STEPS) -> None:
    sa, sb = newest(a), newest(b)
    assert sa[ckpt.STEP] == sb[ckpt.STEP] == steps
    for key in COMPARED:
        assert_same_state(sa[key], sb[key], key)


def wait_for(predicate, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, f"process ended early (rc={proc.returncode})"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def checkpoint_exists(run: Path, step: int) -> bool:
    return (run / "checkpoints" / f"step_{step:08d}.json").exists()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (torchrun, its workers, their DataLoader workers)."""
    pids, i = [pid], 0
    while i < len(pids):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pids[i]}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        i += 1
    return pids


def worker_pids(torchrun_pid: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (its children that have RANK in their env)."""
    pids: dict[int, int] = {}
    for task in Path(f"/proc/{torchrun_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                env = dict(item.split("=", 1) for item in Path(f"/proc/{child}/environ").read_text().split("\0") if "=" in item)
                if "RANK" in env:
                    pids[int(env["RANK"])] = int(child)
    return pids


# -- one process --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def straight(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: STEPS steps in one go, in this process."""
    run = tmp_path_factory.mktemp("runs") / "straight"
    assert train_inprocess(tiny_shards, run) == 0
    return run


# -- two processes under torchrun (gloo) ------------------------------------------------------


def torchrun_args(shards: Path, run: Path, *extra: str) -> list[str]:
    return [*TORCHRUN, "-m", "shardgan.train", *train_args(shards, run, "data.batch_size=4", *extra)]


@pytest.fixture(scope="session")
def straight_ddp(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2-process reference: global batch 8 (4 per rank) for STEPS steps."""
    run = tmp_path_factory.mktemp("runs") / "straight_ddp"
    done = subprocess.run(torchrun_args(tiny_shards, run), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return run




# -- a run whose best checkpoint is not its newest ----------------------------------------------

SCRIPTED_SWD = {5: 50.0, 10: 30.0, 15: 40.0, 20: 60.0}
"""The SWD each evaluation of `best_is_older` reports: the best is step 10's, the newest step 20's."""


@pytest.fixture(scope="session")
def best_is_older(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 tiny steps on shards with a val split, an evaluation every 5 steps scoring SCRIPTED_SWD."""
    from shardgan import hooks

    root = tmp_path_factory.mktemp("best_is_older")
    build_dataset(root / "shards", [40], width=24, height=16, val_sizes=(16,))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hooks.Evaluator, "__call__", lambda self, g: {"swd": SCRIPTED_SWD[hooks_step[0]], "diversity": 1.0})
        hooks_step = [0]
        real_evaluate = hooks.Hooks.evaluate

        def evaluate(self: hooks.Hooks) -> None:
            hooks_step[0] = self.t.step
            real_evaluate(self)

        patch.setattr(hooks.Hooks, "evaluate", evaluate)
        run = root / "run"
        extra = ("train.max_steps=20", "eval.every_steps=5", "eval.num_images=16", "checkpoint.every_steps=10")
        assert train_inprocess(root / "shards", run, *extra) == 0
    return run
