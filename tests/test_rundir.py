"""Run-directory files: metrics survive a kill mid-append; truncation keeps one history."""

from __future__ import annotations

from pathlib import Path

from shardgan.rundir import RunDir, append_metrics, read_metrics, truncate_metrics


def test_metrics_append_read_and_a_line_cut_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3):
        append_metrics(path, {"step": step, "loss": step / 10})
    with path.open("a") as f:
        f.write('{"step": 4, "lo')  # killed mid-append
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    truncate_metrics(path, 2)
    assert read_metrics(path) == [{"step": 1, "loss": 0.1}, {"step": 2, "loss": 0.2}]
    assert read_metrics(tmp_path / "absent.jsonl") == []


def test_every_output_lives_under_the_run_root(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "r")
    rd.create()
    paths = [rd.config, rd.architecture, rd.log, rd.metrics, rd.tensorboard, rd.sample(7), rd.best_checkpoints, rd.rollback, rd.abandoned("x")]
    assert all(rd.root in p.parents for p in paths)
    assert rd.sample(7).name == "step_000007.png" and rd.checkpoints.is_dir() and rd.samples.is_dir()
