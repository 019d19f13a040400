"""One save path: the minutes timer counts from the last save, no step is written twice, and the
epoch-end save checks the losses first (also when the finite flag is read a step late, as on CUDA)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from shardgan import checkpoint as ckpt
from shardgan import hooks
from shardgan import train as train_module
from shardgan import trainer
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
    """Each step takes 5 s of a fake clock; a save is due every 60 s, across 15-step epochs."""
    clock = [0.0]
    monkeypatch.setattr(hooks, "time", types.SimpleNamespace(monotonic=lambda: clock[0], perf_counter=lambda: clock[0]))
    real_step = train_module.train_step

    def timed_step(*args):
        clock[0] += 5.0
        return real_step(*args)

    monkeypatch.setattr(train_module, "train_step", timed_step)
    saves = record_saves(monkeypatch)
    assert train_inprocess(tiny_shards, tmp_path / "minutes", *NO_STEP_SAVES, "checkpoint.every_minutes=1", "checkpoint.at_epoch_end=false") == 0
    assert saves == [12, 24, 36, 40]


def test_an_epoch_end_on_a_step_checkpoint_is_written_once(tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saves = record_saves(monkeypatch)
    assert train_inprocess(tiny_shards, tmp_path / "once", f"checkpoint.every_steps={BATCHES_PER_EPOCH}", "checkpoint.at_epoch_end=true") == 0
    assert saves == [15, 30, 40]


class LaggedCheck(trainer.FiniteCheck):
    """The CUDA behaviour on CPU: a step's finite flag is read one step late."""

    def __init__(self, lagged: bool) -> None:
        super().__init__(lagged=True)


def test_epoch_end_save_checks_the_losses_first(tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(trainer, "FiniteCheck", LaggedCheck)
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
