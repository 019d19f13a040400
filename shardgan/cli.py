"""`shardgan` command line: parse, call one library function, turn ShardganError into one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import ShardganError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Pack game frames into WebDataset shards and train DCGANs on them with exact resume.",
)


@app.command("import-ini")
def import_ini_cmd(
    ini: Path = typer.Argument(..., help="The seed project's model_config.ini"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the TOML here (default: stdout)"),
) -> None:
    """Convert the seed's INI config ([CONFIGS] section) into a shardgan TOML config."""
    from .config import import_ini, to_toml

    text = to_toml(import_ini(ini))
    if out is None:
        typer.echo(text)
    else:
        from .atomic import write_bytes_atomic

        write_bytes_atomic(out, text.encode())
        typer.echo(f"wrote {out}")


# -- commands are added above this line, one function each, calling into the library --


def main() -> None:
    """Console-script entry: user errors print one line (`error: ...`) and exit non-zero."""
    try:
        app()
    except ShardganError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
