"""The command line as a user meets it: `python -m shardgan`, --version, and every command given
bad values answers with one line, exit code 2 and no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shardgan import __version__
from shardgan.cli import main, parse_frame_size, parse_part, parse_val
from shardgan.errors import ConfigError
from shardgan.resume import CHANGE_POLICY, ELASTIC, REFUSED
from tests.conftest import PYTHON, ROOT


def shardgan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "shardgan", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.multiproc
def test_version_and_python_dash_m() -> None:
    done = shardgan("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"shardgan {__version__}"


BAD = [
    (["generate", "{run}", "-n", "0"], "'--num' / '-n'"),
    (["generate", "{run}", "-n", "-3"], "'--num' / '-n'"),
    (["generate", "{run}", "--interpolate", "-2"], "'--interpolate'"),
    (["generate", "{tmp}/nope"], "run directory not found: {tmp}/nope"),
    (["generate", "{run}", "--checkpoint", "{tmp}/nope.pt"], "checkpoint not found: {tmp}/nope.pt"),
    (["eval", "{run}", "-n", "-5"], "'--num-images' / '-n'"),
    (["eval", "{run}", "-n", "0"], "'--num-images' / '-n'"),
    (["inspect", "{shards}", "--grid-count", "0", "--grid", "{tmp}/g.png"], "'--grid-count'"),
    (["pack", "{tmp}", "{tmp}/out", "--workers", "0"], "'--workers'"),
    (["pack", "{tmp}", "{tmp}/out", "--quality", "101"], "'--quality'"),
    (["pack", "{tmp}", "{tmp}/out", "--every", "0"], "'--every'"),
    (["train", "--bogus"], "No such option: --bogus"),
    (["trian"], "No such command 'trian'"),
]


@pytest.mark.multiproc
@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_answer_one_line_exit_2(args: list[str], message: str, straight: Path, tiny_shards: Path, tmp_path: Path) -> None:
    fill = {"run": str(straight), "shards": str(tiny_shards), "tmp": str(tmp_path)}
    done = shardgan(*(a.format(**fill) for a in args))
    err = done.stderr.strip()
    assert done.returncode == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert message.format(**fill) in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "g.png").exists()


@pytest.mark.multiproc
@pytest.mark.parametrize("command", ["pack", "inspect", "train", "generate", "eval"])
def test_help_shows_flags_without_a_value_placeholder(command: str) -> None:
    """`--verify` takes no value, so its help must not show `--verify <bool>`."""
    done = shardgan(command, "--help")
    assert done.returncode == 0
    flags = [line for line in done.stdout.splitlines() if "<bool>" in line and "--help" not in line]
    assert flags == []


@pytest.mark.multiproc
def test_allow_config_change_says_what_it_allows(capsys) -> None:
    """The help and the config docstring name the changes resume.CHANGE_POLICY lets it through, and
    say that an image size change is refused, as the policy does."""
    assert CHANGE_POLICY["model.width"] == CHANGE_POLICY["model.height"] == REFUSED
    main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.replace("│", " ").split())  # rich draws a box
    documented = " ".join((Path(__file__).parents[1] / "shardgan" / "config.py").read_text().split())
    for text in (help_text, documented):
        assert "an image size change is always refused" in text
        for key in (k for k, policy in CHANGE_POLICY.items() if policy == ELASTIC):
            assert key.split(".")[1].replace("_", " ") in text or key in text, key


@pytest.mark.multiproc
def test_an_unwritable_run_directory_exits_1_in_one_line_naming_it(tiny_shards: Path, tmp_path: Path, capsys) -> None:
    """What a read-only run directory gives (root ignores chmod, so here: run.root below a file)."""
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the runs folder should be")
    code = main(["train", "--config", str(ROOT / "configs" / "tiny.toml"), f"data.shards={tiny_shards}", f"run.root={blocker}", "train.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: cannot write or read ") and str(blocker) in err and err.count("\n") == 1, err
    assert blocker.read_text() == "a file where the runs folder should be"


def test_pack_flags_parse_to_typed_values() -> None:
    assert parse_frame_size("88x66") == (88, 66) and parse_frame_size("64X48") == (64, 48) and parse_frame_size("88xauto") == (88, None)
    assert parse_val("500") == 500 and parse_val("0.05") == 0.05
    assert parse_part("3/8") == (3, 8)
    for parse, text, flag in [(parse_frame_size, "abc", "--size"), (parse_frame_size, "0x5", "--size"), (parse_frame_size, "autoxauto", "one side auto"), (parse_val, "1.5", "--val"), (parse_part, "2/2", "--part")]:
        with pytest.raises(ConfigError, match=flag):
            parse(text)


@pytest.mark.parametrize("text", ["1.0", "1.", "2.5", "1e0"])
def test_val_written_with_a_point_is_a_fraction_in_0_1(text: str) -> None:
    with pytest.raises(ConfigError, match=r"fraction in \(0, 1\)"):
        parse_val(text)
    assert parse_val("1") == 1 and parse_val("0.5") == 0.5 and parse_val("1e-2") == 0.01
