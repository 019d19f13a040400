"""What `shardgan` and `python -m shardgan.train` share: the root app, the train command's flags
and the one exit path (a ShardganError or usage error: one line and its exit code).

Below both cli and train, so `python -m shardgan.train` parses exactly as `shardgan train`
without importing cli, which imports train: the program's own module would run a second time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer
from typer._click.exceptions import ClickException  # the click that typer bundles: usage errors

from . import __version__
from .errors import ShardganError

HELP = "Pack game frames into WebDataset shards and train DCGANs on them with exact resume."


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"shardgan {__version__}")
        raise typer.Exit()


def _root(version: bool = typer.Option(False, "--version", metavar="", callback=_print_version, is_eager=True, help="Print the version and exit")) -> None:
    """`--version` (the app's help is HELP, given to typer.Typer)."""


def new_app() -> typer.Typer:
    """The `shardgan` app without its commands (each entry point adds the ones it serves)."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=HELP)
    app.callback()(_root)
    return app


def add_train_command(app: typer.Typer, launch: Callable[..., int]) -> None:
    """`train`'s flags, calling `launch` (train.launch, or cli's stand-in that imports it when run)."""

    @app.command("train")
    def train_cmd(
        overrides: Optional[list[str]] = typer.Argument(None, metavar="[section.key=value]...", help="Override config keys"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config, e.g. configs/gc7m.toml"),
        run_name: Optional[str] = typer.Option(None, "--run-name", help="Run directory name (default: the config file's name)"),
        allow_config_change: bool = typer.Option(False, "--allow-config-change", metavar="", help="Resume despite a batch size, world size or train.seed change (not bit-exact; an image size change is always refused)"),
        dry_run: bool = typer.Option(False, "--dry-run", metavar="", help="Print the resolved config and exit"),
    ) -> None:
        """Train a DCGAN (one process; `torchrun -m shardgan.train` takes the same arguments, for DDP).
        Exits 75 when a signal stopped it after its checkpoint: rerun the same command to resume."""
        raise typer.Exit(launch(config, overrides or [], run_name=run_name, allow_config_change=allow_config_change, dry_run=dry_run))


def run_app(app: typer.Typer, argv: list[str] | None = None) -> int:
    """Run one command line: user errors, usage errors included, print one line (`error: ...`) and
    give 2 (3: a non-finite loss); a command's own code is passed on (train: 75 when a signal
    stopped it after its checkpoint)."""
    try:
        code = app(args=argv, standalone_mode=False)
    except (ShardganError, ClickException) as e:
        message = e.format_message() if isinstance(e, ClickException) else str(e)
        if message:  # empty for a bare `shardgan`, which has printed its help
            print(f"error: {message}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the machine's refusal (disk full, read-only, permissions): one line naming the file
        print(f"error: cannot write or read {e.filename or 'a file'}: {e.strerror or e}", file=sys.stderr)
        return 1
    code = code if isinstance(code, int) else 0
    if code == 130 and os.environ.get("RANK", "0") == "0":  # typer's answer to a KeyboardInterrupt (train: a second Ctrl-C)
        print("interrupted: what was complete is kept", file=sys.stderr)
    return code
