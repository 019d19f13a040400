"""Packing shared by the pack, inspect and pack-fault tests: a quiet pack_dataset with small
options, a tree's bytes to compare packs by, and the one error line of a failing command."""

from __future__ import annotations

from pathlib import Path

import pytest
import webdataset as wds

from shardgan import cli
from shardgan.chunks import EncodeOptions
from shardgan.cut import CutOptions
from shardgan.frames import FrameSpec
from shardgan.manifest import load_manifest
from shardgan.pack import PackOptions, pack_dataset

SMALL = PackOptions(EncodeOptions(FrameSpec(40, 30)), CutOptions(samples_per_shard=8))
"""40x30 frames, 8 samples a shard: a few shards from a few dozen frames."""


def pack(src: Path, dst: Path, options: PackOptions = SMALL, **kwargs) -> None:
    pack_dataset(src, dst, options, log=lambda line: None, **kwargs)


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (hidden ones too) by relative path: equal trees are equal dicts."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def cli_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    """The one error line of a failing `shardgan` command (progress lines before it dropped)."""
    code = cli.main(list(args))
    # Progress bars (lines redrawn with \r) may come first; the error itself is exactly one line.
    lines = [line for line in capsys.readouterr().err.split("\n") if line and "\r" not in line]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def read_webdataset(dst: Path, split: str = "train") -> list[dict]:
    urls = [str(dst / s.name) for s in load_manifest(dst).split(split).shards]
    return list(wds.WebDataset(urls, shardshuffle=False))
