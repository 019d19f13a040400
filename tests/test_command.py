"""The command line `shardgan` and `python -m shardgan.train` share: `train`'s flags reach launch
as given, every error is one line and its exit code, and `python -m shardgan.train` runs train.py
once (it builds the command without cli, which imports train)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import typer

from shardgan.command import add_train_command, new_app, run_app
from shardgan.errors import NonFiniteLossError
from tests.conftest import PYTHON, ROOT


def test_train_flags_reach_launch_and_its_code_is_the_exit_code() -> None:
    calls = []

    def launch(config, overrides, **flags) -> int:
        calls.append((config, overrides, flags))
        return 75

    app = new_app()
    add_train_command(app, launch)
    code = run_app(app, ["train", "-c", "x.toml", "a.b=1", "c.d=2", "--run-name", "r", "--allow-config-change", "--dry-run"])
    assert code == 75
    assert calls == [(Path("x.toml"), ["a.b=1", "c.d=2"], {"run_name": "r", "allow_config_change": True, "dry_run": True})]
    assert run_app(app, ["train"]) == 75 and calls[-1] == (None, [], {"run_name": None, "allow_config_change": False, "dry_run": False})


def test_every_error_is_one_line_and_its_exit_code(capsys: pytest.CaptureFixture) -> None:
    app = new_app()

    @app.command("fail")
    def fail(kind: str) -> None:
        if kind == "loss":
            raise NonFiniteLossError("non-finite loss at step 3")
        if kind == "disk":
            raise OSError(28, "No space left on device", "/runs/x.pt")
        raise typer.Exit(int(kind))

    answers = {}
    for argv in (["fail", "loss"], ["fail", "disk"], ["fail", "--bogus"], ["fial"], ["fail", "130"], ["fail", "0"]):
        code = run_app(app, argv)
        answers[argv[-1]] = (code, capsys.readouterr().err)
    assert answers["loss"] == (3, "error: non-finite loss at step 3\n")
    assert answers["disk"] == (1, "error: cannot write or read /runs/x.pt: No space left on device\n")
    assert answers["--bogus"] == (2, "error: No such option: --bogus\n")
    assert answers["fial"][0] == 2 and answers["fial"][1].startswith("error: No such command 'fial'") and answers["fial"][1].count("\n") == 1
    assert answers["130"] == (130, "interrupted: what was complete is kept\n")
    assert answers["0"] == (0, "")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.multiproc
def test_python_dash_m_shardgan_train_runs_train_py_once_and_never_imports_cli() -> None:
    """`-X importtime` lists every module imported: train.py runs as __main__, so shardgan.train
    in the list would be a second run of it (what a cli import from its __main__ block did)."""
    done = run("-X", "importtime", "-m", "shardgan.train", "--dry-run", "run.name=once")
    assert done.returncode == 0 and 'name = "once"' in done.stdout, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "shardgan.command" in imported  # the list is read right
    assert "shardgan.train" not in imported and "shardgan.cli" not in imported


@pytest.mark.multiproc
@pytest.mark.parametrize("args", [["--bogus"], ["--dry-run", "a.b=1"], ["--dry-run", "train.seed=3"], ["--help"]])
def test_python_dash_m_shardgan_train_answers_as_shardgan_train(args: list[str]) -> None:
    """The same output and exit code (the usage line names the program as it was called, and the
    help's box is as wide as that line)."""
    direct, via_cli = run("-m", "shardgan.train", *args), run("-m", "shardgan", "train", *args)
    assert direct.returncode == via_cli.returncode and direct.stderr == via_cli.stderr
    same = direct.stdout.replace("python -m shardgan.train train", "python -m shardgan train")
    assert same.split() == via_cli.stdout.split() and (args == ["--help"] or same == via_cli.stdout)
