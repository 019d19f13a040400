"""One save path: the minutes timer counts from the last save, no step is written twice, and the
epoch-end save checks the losses first (a step's flags are otherwise read a step late)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from shardgan import checkpoint as ckpt
from shardgan.rundir import read_metrics
from shardgan import hooks
from shardgan import train as train_module
from shardgan import state
from shardgan.synthetic import game_frame
from tests.conftest import build_dataset
from tests.trainer_runs import train_inprocess

BATCHES_PER_EPOCH = 15
NO_STEP_SAVES = ("checkpoint.every_steps=0", "checkpoint.keep_last=100", "train.sample_every_steps=0")


def record_saves(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    saves: list[int] = []
    real_save = ckpt.save

    def save(directory: Path, step: int, *args, **kwargs) -> Path:
        saves.append(step)
        return real_save(directory, step, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save", save)
    return saves


def test_minutes_timer_counts_from_the_last_save_not_from_epoch_ends(tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step takes 5 s of a fake clock; a save is due every 60 s, across 15-step epochs. The
    timer is agreed a step late: due at steps 12, 25 and 38 (60 s after the saves at 0, 13, 26),
    saved at the step after."""
    clock = [0.0]
    monkeypatch.setattr(hooks, "time", types.SimpleNamespace(monotonic=lambda: clock[0], perf_counter=lambda: clock[0]))
    real_step = train_module.train_step

    def timed_step(*args):
        clock[0] += 5.0
        return real_step(*args)

    monkeypatch.setattr(train_module, "train_step", timed_step)
    saves = record_saves(monkeypatch)
    assert train_inprocess(tiny_shards, tmp_path / "minutes", *NO_STEP_SAVES, "checkpoint.every_minutes=1", "checkpoint.at_epoch_end=false") == 0
    assert saves == [13, 26, 39, 40]
    rates = [r["images_per_s"] for r in read_metrics(tmp_path / "minutes" / "metrics.jsonl") if "images_per_s" in r]
    assert set(rates) == {8 / 5.0}  # the hooks count every step's batch of 8 (one rank), 5 s apart


def test_the_meters_first_rate_is_timed_by_the_clock_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(hooks, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    meter = hooks.Meter()
    meter.images, clock[0] = 24, 104.0
    assert meter.rate() == 6.0
    meter.images, clock[0] = 10, 109.0
    assert meter.rate() == 2.0


def test_only_the_checked_losses_must_be_finite() -> None:
    finite = {"loss_d": torch.tensor(0.5), "loss_g": torch.tensor(1.0), "d_real": torch.tensor(float("nan"))}
    assert not hooks.not_finite(finite)  # a stat, not a loss: never stops the run
    assert hooks.not_finite({**finite, "r1": torch.tensor(float("inf"))})  # a penalty, on the steps it is computed
    assert hooks.not_finite({**finite, "loss_g": torch.tensor(float("nan"))})


def test_an_epoch_end_on_a_step_checkpoint_is_written_once(tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saves = record_saves(monkeypatch)
    assert train_inprocess(tiny_shards, tmp_path / "once", f"checkpoint.every_steps={BATCHES_PER_EPOCH}", "checkpoint.at_epoch_end=true") == 0
    assert saves == [15, 30, 40]


def test_epoch_end_save_checks_the_losses_first(tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The NaN is at an epoch's last step, whose flags an ordinary step would read only at the next."""
    d_loss, g_loss = train_module.LOSSES["bce"]
    calls = [0]

    def poisoned(real, fake):
        calls[0] += 1
        return d_loss(real, fake) * (float("nan") if calls[0] == BATCHES_PER_EPOCH else 1.0)

    monkeypatch.setitem(train_module.LOSSES, "bce", (poisoned, g_loss))
    run = tmp_path / "nan_at_epoch_end"
    assert train_inprocess(tiny_shards, run, *NO_STEP_SAVES, "checkpoint.every_minutes=0", "checkpoint.at_epoch_end=true") == 3
    assert f"non-finite loss at step {BATCHES_PER_EPOCH}" in capsys.readouterr().err
    assert ckpt.list_checkpoints(run / "checkpoints") == []


def test_watchdog_counts_logs_in_a_row_and_resets() -> None:
    dog = hooks.CollapseWatchdog(logs_in_a_row=3, evals_in_a_row=2)
    wins = {"d_real": 0.99, "d_fake": 0.01, "diversity": 0.9}
    fair = {"d_real": 0.7, "d_fake": 0.3, "diversity": 0.9}
    assert [dog.check(wins) for _ in range(2)] == [None, None]
    assert dog.check(fair) is None  # the streak is broken
    assert [dog.check(wins) for _ in range(3)] == [None, None, "d_wins"] and dog.started == ["d_wins"]
    assert dog.check(wins) == "d_wins" and dog.started == []  # warned at the third, not again
    low = {"step": 0, "swd": 120.0, "diversity": 0.1}
    assert dog.check({**wins, "diversity": 0.01}) == "d_wins"  # a log line's own batch diversity does not count
    assert [dog.check(low), dog.check(wins), dog.check(low)] == ["d_wins", "d_wins", "d_wins+low_diversity"]  # evaluations in a row
    assert dog.started == ["low_diversity"]
    assert dog.check(fair) == "low_diversity" and dog.started == []  # log lines during the collapse carry it, without a new warning
    assert dog.check({"step": 0, "swd": 80.0, "diversity": 0.9}) is None
    assert hooks.CollapseWatchdog(logs_in_a_row=0, evals_in_a_row=0).check(wins) is None


def test_watchdog_judges_diversity_from_collapse_after_steps_on() -> None:
    """A healthy demo run's first evaluations (steps 200, 400: blurry means, 0.12 and 0.16) are
    not a collapse; the same spread from step 500 on is."""
    dog = hooks.CollapseWatchdog(logs_in_a_row=3, evals_in_a_row=2, after_step=500)
    early = [dog.check({"step": step, "swd": 250.0, "diversity": d}) for step, d in ((200, 0.12), (400, 0.16))]
    assert early == [None, None] and dog.low_diversity == 0
    assert [dog.check({"step": step, "swd": 90.0, "diversity": 0.1}) for step in (600, 800)] == [None, "low_diversity"]


def test_watchdog_warns_once_marks_metrics_and_a_resumed_run_continues_the_streak(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """D 'wins' from step 15 on (stats forced); logs every 5 steps, 3 logs in a row to warn."""
    import torch

    real_step = train_module.train_step

    def d_wins_late(t, images):
        stats = real_step(t, images)
        if t.step >= 14:  # the step about to be counted is t.step + 1
            stats.update(d_real=torch.tensor(0.99), d_fake=torch.tensor(0.01))
        return stats

    monkeypatch.setattr(train_module, "train_step", d_wins_late)
    run = tmp_path / "collapse"
    assert train_inprocess(tiny_shards, run, "train.max_steps=30", "train.collapse_logs=3") == 0
    records = [r for r in read_metrics(run / "metrics.jsonl") if "loss_d" in r]
    assert [(r["step"], r.get("collapse")) for r in records] == [(5, None), (10, None), (15, None), (20, None), (25, "d_wins"), (30, "d_wins")]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "collapse watchdog" in line]
    assert len(warnings) == 1 and "WARNING collapse watchdog at step 25: D has won" in warnings[0]
    assert train_inprocess(tiny_shards, run, "train.max_steps=35", "train.collapse_logs=3") == 0
    assert read_metrics(run / "metrics.jsonl")[-1]["collapse"] == "d_wins"  # the streak went on across the resume
    assert "collapse watchdog" not in capsys.readouterr().err


class StandInG(torch.nn.Module):
    """A sampler standing in for the EMA generator: z picks one of `frames` (N, C, H, W) in
    [-1, 1], plus speckle of std `speckle`."""

    def __init__(self, frames: torch.Tensor, speckle: float) -> None:
        super().__init__()
        self.frames, self.speckle = frames, speckle

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        index = (z.flatten(1)[:, 0].abs() * 1000).long() % len(self.frames)
        noise = torch.randn(len(z), *self.frames.shape[1:], generator=torch.Generator().manual_seed(int(index.sum())))
        return (self.frames[index] + self.speckle * noise).clamp(-1, 1)


def frames_as_floats(indices: range) -> torch.Tensor:
    return torch.stack([torch.from_numpy(game_frame(i, 24, 16)).permute(2, 0, 1) for i in indices]).float() / 127.5 - 1


def run_with_sampler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampler: torch.nn.Module) -> Path:
    """20 tiny steps on shards with a val split, the sampler replaced; an evaluation every 5 steps."""
    shards = tmp_path / "shards"
    build_dataset(shards, [40], width=24, height=16, val_sizes=(32,))
    monkeypatch.setattr(state.TrainState, "sampler", lambda self: sampler)
    run = tmp_path / "run"
    extra = ("train.max_steps=20", "eval.every_steps=5", "eval.num_images=32", "train.collapse_evals=2", "train.collapse_after_steps=0", "checkpoint.every_steps=10")
    assert train_inprocess(shards, run, *extra) == 0
    return run


def test_watchdog_flags_a_g_of_one_image_plus_speckle_and_names_the_best_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from shardgan.generate import best_checkpoint
    from shardgan.rundir import RunDir

    run = run_with_sampler(tmp_path, monkeypatch, StandInG(frames_as_floats(range(7, 8)), speckle=0.1))
    records = read_metrics(run / "metrics.jsonl")
    evals = [r for r in records if "swd" in r]
    assert [(r["step"], r.get("collapse")) for r in evals] == [(5, None), (10, "low_diversity"), (15, "low_diversity"), (20, "low_diversity")]
    assert all(r["diversity"] < hooks.MIN_DIVERSITY for r in evals)
    assert [r.get("collapse") for r in records if "loss_d" in r and r["step"] > 10] == ["low_diversity"] * 2  # log lines say it too
    warnings = [line for line in capsys.readouterr().err.splitlines() if "collapse watchdog" in line]
    assert len(warnings) == 1 and "WARNING collapse watchdog at step 10: mode collapse" in warnings[0], warnings
    best = best_checkpoint(RunDir(run))
    assert best is not None and best.path.exists() and warnings[0].endswith(f"best checkpoint: {best}")


def test_watchdog_flags_nothing_on_a_healthy_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    run = run_with_sampler(tmp_path, monkeypatch, StandInG(frames_as_floats(range(40)), speckle=0.02))  # the train frames
    records = read_metrics(run / "metrics.jsonl")
    assert not any("collapse" in r for r in records)
    assert all(r["diversity"] > 0.8 for r in records if "swd" in r) and len([r for r in records if "swd" in r]) == 4
    assert "collapse watchdog" not in capsys.readouterr().err


SLOW_EVAL_S, TIMEOUT_S = 10.0, 4
"""Rank 0's saves and start-up must fit in the timeout (only evaluation is exempt), hence 4 s."""


def _slow_evaluation_rank(rank: int, port: int, results, args: list[str]) -> None:
    """One rank of a 2-rank gloo run whose every evaluation takes SLOW_EVAL_S more (on rank 0)."""
    import os
    import time

    import torch

    from shardgan.cli import main
    from shardgan.evaluate import Evaluator

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    real_call = Evaluator.__call__

    def slow_call(self, generator):
        time.sleep(SLOW_EVAL_S)
        return real_call(self, generator)

    Evaluator.__call__ = slow_call
    code = None
    try:
        code = main(["train", *args])
    finally:
        results.put((rank, code))


@pytest.mark.multiproc
@pytest.mark.slow
def test_evaluations_longer_than_the_collective_timeout_do_not_stop_the_run(tmp_path: Path) -> None:
    """Each SWD evaluation on rank 0 takes over twice train.collective_timeout_s: rank 1 waits in
    heartbeats, both ranks finish, and the scores are logged."""
    from tests.conftest import build_dataset, spawned_ranks
    from tests.trainer_runs import train_args

    shards = tmp_path / "shards"
    build_dataset(shards, [20, 20], width=24, height=16, val_sizes=(8,))
    run = tmp_path / "runs" / "slow_eval"
    args = train_args(shards, run, "data.batch_size=4", "train.max_steps=4", "eval.every_steps=2", "eval.num_images=8", f"train.collective_timeout_s={TIMEOUT_S}")
    got, _ = spawned_ranks(_slow_evaluation_rank, args)
    assert got == [(0, 0), (1, 0)]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "swd" in r] == [2, 4]


def _failing_evaluator_rank(rank: int, port: int, results, args: list[str]) -> None:
    """One rank of a 2-rank gloo run whose evaluator rank 0 cannot build: its exit code and last stderr line."""
    import contextlib
    import io
    import os

    import torch

    from shardgan.cli import main

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    err, code = io.StringIO(), None
    try:
        with contextlib.redirect_stderr(err):
            code = main(["train", *args])
    finally:
        results.put((rank, code, err.getvalue().strip().splitlines()[-1:]))


@pytest.mark.multiproc
def test_an_evaluator_rank_0_cannot_build_stops_every_rank_with_its_line(tmp_path: Path) -> None:
    """Only rank 0 builds the evaluator; rank 1 stops too, with rank 0's one line, not a pointer to its log."""
    from tests.conftest import spawned_ranks
    from tests.trainer_runs import train_args

    shards = tmp_path / "shards"
    build_dataset(shards, [20, 20], width=24, height=16, val_sizes=(8,))
    args = train_args(shards, tmp_path / "runs" / "no_fid", "data.batch_size=4", "train.max_steps=4", f"eval.fid_weights={tmp_path / 'nope.pth'}")
    got, exitcodes = spawned_ranks(_failing_evaluator_rank, args)
    (_, code_0, line_0), (_, code_1, line_1) = got
    assert exitcodes == [0, 0] and code_0 == code_1 == 2
    assert line_0 == line_1 and line_0[0].startswith("error: eval.fid_weights: no file") and "never downloads" in line_0[0]
