"""Pack under faults: kill -9 mid-pack, junk inputs, corrupted bytes, a full disk. Nothing is lost,
nothing partial appears under a final name, every bad input is listed."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import shardgan.atomic
import shardgan.chunks
from shardgan.chunks import EncodeOptions, read_chunk_records
from shardgan.cut import CutOptions
from shardgan.errors import DataError
from shardgan.frames import Frame, FrameSpec, Skip, load_frames
from shardgan.manifest import load_manifest
from shardgan.pack import WORK_DIR, WORKLIST_NAME, PackOptions, pack_dataset
from shardgan.synthetic import game_frame, write_frames

from ..conftest import PYTHON, ROOT, png_bomb
from ..pack_runs import cli_error, pack, tree_bytes

KILL_OPTIONS = PackOptions(EncodeOptions(FrameSpec(40, 30)), CutOptions(samples_per_shard=6, val=4))
KILL_ARGS = ["--size", "40x30", "--samples-per-shard", "6", "--val", "4", "--workers", "2"]
# The real CLI, with each chunk and shard task slowed down so a kill can land in a chosen phase.
SLOW_PACK = """
import functools, sys, time
import shardgan.chunks as chunks, shardgan.cut as cut, shardgan.pack as pack
from shardgan import cli

def slowly(fn):
    @functools.wraps(fn)  # keeps the pickled name, so forked pool workers run the slow one too
    def wrapped(task):
        time.sleep(0.15)
        return fn(task)
    return wrapped

# Replaced where pack calls them and where pickling looks them up by name:
pack.encode_chunk = chunks.encode_chunk = slowly(chunks.encode_chunk)
pack.write_shard_task = cut.write_shard_task = slowly(cut.write_shard_task)
sys.argv = ["shardgan", "pack", *sys.argv[1:]]
sys.exit(cli.main())
"""


def _count(dst: Path, what: str) -> int:
    pattern = ".work/chunk-*.bin" if what == "chunks" else "*-*.tar"
    return len(list(dst.glob(pattern)))


def _kill_when(src: Path, dst: Path, what: str, count: int | None = None, delay_s: float = 0.0) -> None:
    """Start a pack, SIGKILL it once `count` chunk/shard files exist (or after delay_s), check no harm."""
    proc = subprocess.Popen([PYTHON, "-c", SLOW_PACK, str(src), str(dst), *KILL_ARGS], cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    if count is None:
        while not dst.exists() and time.monotonic() < deadline:  # start-up (imports) is not the interesting part
            time.sleep(0.005)
        time.sleep(delay_s)
    else:
        while _count(dst, what) < count and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the pack finished before the kill; the test did not test anything"


def _assert_nothing_partial(dst: Path, reference: dict[str, bytes]) -> None:
    """Final names hold complete content only: every shard is already the finished one, chunks parse."""
    for path in dst.glob("*.tar"):
        assert path.read_bytes() == reference[path.name], f"partial or wrong shard under final name {path.name}"
    for path in dst.glob(".work/chunk-*.bin"):
        paths = [p for p, _ in json.loads((dst / WORK_DIR / WORKLIST_NAME).read_text())["inputs"]]
        read_chunk_records(path, paths)
    if (dst / "manifest.json").exists():
        assert (dst / "manifest.json").read_bytes() == reference["manifest.json"]


@pytest.mark.multiproc
@pytest.mark.slow
def test_kill_9_at_several_points_then_rerun_is_byte_identical(tmp_path: Path) -> None:
    write_frames(tmp_path / "src", 48)
    pack(tmp_path / "src", tmp_path / "reference", KILL_OPTIONS)
    reference = tree_bytes(tmp_path / "reference")
    dst = tmp_path / "dst"
    # Each run resumes the one before and is killed later on: in stage 1, again in stage 1, in stage 2.
    for what, count in [("chunks", 2), ("chunks", 5), ("shards", 3)]:
        _kill_when(tmp_path / "src", dst, what, count)
        _assert_nothing_partial(dst, reference)
    pack(tmp_path / "src", dst, KILL_OPTIONS, workers=2)
    assert tree_bytes(dst) == reference


@pytest.mark.multiproc
@pytest.mark.soak
@pytest.mark.parametrize("attempt", range(20))
def test_kill_9_at_random_moments_soak(tmp_path: Path, attempt: int) -> None:
    write_frames(tmp_path / "src", 48)
    pack(tmp_path / "src", tmp_path / "reference", KILL_OPTIONS)
    reference = tree_bytes(tmp_path / "reference")
    _kill_when(tmp_path / "src", tmp_path / "dst", "time", delay_s=random.Random(attempt).uniform(0.0, 1.0))
    _assert_nothing_partial(tmp_path / "dst", reference)
    pack(tmp_path / "src", tmp_path / "dst", KILL_OPTIONS, workers=2)
    assert tree_bytes(tmp_path / "dst") == reference


def _junk_dir(src: Path) -> tuple[dict[str, str], list[str]]:
    """Writes a junk folder; returns {bad path: expected reason prefix} and the convertible inputs."""
    frame = Image.fromarray(game_frame(100))
    png, jpg = io.BytesIO(), io.BytesIO()
    frame.save(png, format="PNG")
    frame.save(jpg, format="JPEG")
    bad_bytes = {
        "junk/empty.png": b"",
        "junk/truncated.png": png.getvalue()[:2000],
        "junk/truncated.jpg": jpg.getvalue()[: len(jpg.getvalue()) // 2],
        "junk/random.png": np.random.default_rng(1).bytes(5000),
        "junk/random.JPG": np.random.default_rng(2).bytes(5000),
        "junk/bomb.png": png_bomb(100_000, 100_000),
        "junk/locked.png": png.getvalue(),
        "junk/gone.png": png.getvalue(),
    }
    for name, data in bad_bytes.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    Image.fromarray(game_frame(101, 6, 4)).save(src / "junk/tiny.png")
    (src / "junk/dangling.png").symlink_to(src / "nowhere.png")
    (src / "junk/loop.png").symlink_to(src / "junk/loop.png")
    (src / "junk/back").symlink_to(src)
    os.mkfifo(src / "junk/fifo.png")
    expected = {
        "junk/empty.png": "empty file",
        "junk/truncated.png": "corrupt",
        "junk/truncated.jpg": "corrupt",
        "junk/random.png": "not an image",
        "junk/random.JPG": "not an image",
        "junk/bomb.png": "decompression bomb",
        "junk/locked.png": "unreadable: Permission denied",
        "junk/gone.png": "vanished",
        "junk/tiny.png": "too small",
        "junk/dangling.png": "dangling symlink",
        "junk/loop.png": "symlink loop",
        "junk/back": "symlink loop",
        "junk/fifo.png": "not a regular file",
    }
    rgb = Image.fromarray(game_frame(102))
    sixteen = Image.fromarray(np.asarray(Image.fromarray(game_frame(108)).convert("L")).astype(np.uint16) * 257)
    palette_alpha = Image.fromarray(game_frame(103)).convert("P")
    palette_alpha.info["transparency"] = 3
    converted = {
        "odd/gray.png": rgb.convert("L"),
        "odd/rgba.png": Image.fromarray(game_frame(104)).convert("RGBA"),
        "odd/palette.png": Image.fromarray(game_frame(105)).convert("P"),
        "odd/palette_alpha.png": palette_alpha,
        "odd/sixteen_bit.png": sixteen,
        "odd/portrait.bmp": Image.fromarray(game_frame(106, 90, 160)),
        "odd/photo.webp": Image.fromarray(game_frame(107)),
    }
    for name, image in converted.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(src / name)
    return expected, list(converted)


def test_junk_folder_packs_the_good_and_lists_every_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    good = [p.relative_to(src).as_posix() for p in write_frames(src, 12)]
    expected, converted = _junk_dir(src)
    # As root, chmod 000 does not stop reads: make one file unreadable and one vanish after the scan.
    real_read_bytes, real_scan = Path.read_bytes, shardgan.chunks.scan

    def read_bytes(path: Path) -> bytes:
        if path.name == "locked.png":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_read_bytes(path)

    def scan_then_delete(root: Path):
        found = real_scan(root)
        (root / "junk/gone.png").unlink()
        return found

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(shardgan.chunks, "scan", scan_then_delete)
    lines: list[str] = []
    pack_dataset(src, tmp_path / "dst", PackOptions(EncodeOptions(FrameSpec(40, 30))), workers=1, log=lines.append)
    manifest = load_manifest(tmp_path / "dst")
    skipped = {s.path: s.reason for s in manifest.skipped}
    assert sorted(skipped) == sorted(expected)
    for path, prefix in expected.items():
        assert skipped[path].startswith(prefix), (path, skipped[path])
    packed = {s["src"] for s in _metas(tmp_path / "dst")}
    assert packed == set(good) | set(converted)
    assert any(line.startswith("skipped: ") for line in lines)


def _metas(dst: Path) -> list[dict]:
    import json

    import webdataset as wds

    manifest = load_manifest(dst)
    urls = [str(dst / s.name) for s in manifest.split("train").shards]
    return [json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False)]


def _valid_image(kind: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(game_frame(7, 48, 36)).save(buf, format={"jpg": "JPEG"}.get(kind, kind.upper()))
    return buf.getvalue()


VALID = {kind: _valid_image(kind) for kind in ("png", "jpg", "webp", "bmp")}


@st.composite
def corrupted_image(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid image file with random damage: cut short, bytes overwritten, or junk spliced in."""
    kind = draw(st.sampled_from(sorted(VALID)))
    data = bytearray(VALID[kind])
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(data) - 1))
        damage = draw(st.sampled_from(["truncate", "overwrite", "insert"]))
        if damage == "truncate":
            del data[where:]
        elif damage == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=16))
            data[where : where + len(patch)] = patch
        else:
            data[where:where] = draw(st.binary(min_size=1, max_size=64))
        if not data:
            break
    return kind, bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted_image())
def test_corrupted_bytes_give_a_frame_or_a_reason_never_an_exception(case: tuple[str, bytes]) -> None:
    kind, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"frame.{kind}"
        path.write_bytes(data)
        items = list(load_frames(path.parent, path.name, FrameSpec(32, 24)))
    assert len(items) == 1
    item = items[0]
    assert (isinstance(item, Skip) and item.path == path.name) or (isinstance(item, Frame) and item.pixels.shape == (24, 32, 3)), item


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(corrupted_image(), min_size=3, max_size=6))
def test_pack_of_corrupted_files_accounts_for_every_input(tmp_path_factory: pytest.TempPathFactory, cases: list) -> None:
    root = tmp_path_factory.mktemp("corrupt")
    good = [p.relative_to(root / "src").as_posix() for p in write_frames(root / "src", 4)]
    bad = []
    for i, (kind, data) in enumerate(cases):
        (root / "src" / f"bad{i}.{kind}").write_bytes(data)
        bad.append(f"bad{i}.{kind}")
    pack(root / "src", root / "dst", PackOptions(EncodeOptions(FrameSpec(32, 24), blank_threshold=0)))
    manifest = load_manifest(root / "dst")
    packed = {m["src"] for m in _metas(root / "dst")}
    skipped = {s.path for s in manifest.skipped}
    assert set(good) <= packed and not packed & skipped and packed | skipped <= set(good) | set(bad)
    # Each still image ends up exactly once: packed, skipped with a reason, or a counted duplicate.
    assert len(packed) + len(skipped) + manifest.filtered["duplicate"] == len(good) + len(bad)


class _FullDisk:
    """A file whose writes fail with ENOSPC once `budget` bytes have gone into shard files."""

    written = 0

    def __init__(self, real, budget: int):
        self.real, self.budget = real, budget

    def write(self, data: bytes) -> int:
        if ".tar." in self.real.name:
            _FullDisk.written += len(data)
            if _FullDisk.written > self.budget:
                raise OSError(errno.ENOSPC, "No space left on device")
        return self.real.write(data)

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.real.close()


def test_disk_full_gives_a_clear_error_and_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_frames(tmp_path / "src", 30)
    pack(tmp_path / "src", tmp_path / "reference")
    reference = tree_bytes(tmp_path / "reference")
    _FullDisk.written = 0
    monkeypatch.setattr(shardgan.atomic, "open", lambda path, mode: _FullDisk(open(path, mode), budget=80_000), raising=False)
    with pytest.raises(DataError, match=r"pack stopped writing to .*No space left on device; .*rerun"):
        pack(tmp_path / "src", tmp_path / "dst", workers=1)
    monkeypatch.undo()
    assert not (tmp_path / "dst" / "manifest.json").exists()
    assert 0 < len(list((tmp_path / "dst").glob("*.tar"))) < len([n for n in reference if n.endswith(".tar")])
    _assert_nothing_partial(tmp_path / "dst", reference)
    assert not [p for p in (tmp_path / "dst").rglob("*") if p.name.endswith(".tmp")]
    pack(tmp_path / "src", tmp_path / "dst")
    assert tree_bytes(tmp_path / "dst") == reference


def test_unwritable_dst_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_frames(tmp_path / "src", 3)
    (tmp_path / "a_file").write_text("not a directory")
    err = cli_error(capsys, "pack", str(tmp_path / "src"), str(tmp_path / "a_file" / "dst"))
    assert "pack stopped writing to" in err and "Not a directory" in err


def test_val_larger_than_the_input_is_refused_before_encoding(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_frames(tmp_path / "src", 12)
    err = cli_error(capsys, "pack", str(tmp_path / "src"), str(tmp_path / "dst"), "--val", "1000")
    assert f"--val 1000 asks for 1000 validation samples but {tmp_path / 'src'} holds only 12 frames" in err
    assert not (tmp_path / "dst" / ".work").exists()  # nothing was encoded


@pytest.mark.multiproc
@pytest.mark.slow
def test_ctrl_c_during_pack_is_one_line_exit_130_and_the_rerun_goes_on(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group (pack and its pool workers), as in a terminal.
    96 frames (12 slowed chunks): the interrupt lands with most of the encoding still to do,
    also when the chunk renames lag behind the workers."""
    write_frames(tmp_path / "src", 96)
    pack(tmp_path / "src", tmp_path / "reference", KILL_OPTIONS)
    dst = tmp_path / "dst"
    proc = subprocess.Popen([PYTHON, "-c", SLOW_PACK, str(tmp_path / "src"), str(dst), *KILL_ARGS], cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while _count(dst, "chunks") < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    lines = [line for line in stderr.split("\n") if line and "\r" not in line]
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert lines == [f"error: interrupted: the frames encoded so far are kept in {dst / '.work'}; run the same command again to go on"]
    assert _count(dst, "chunks") >= 2
    pack(tmp_path / "src", dst, KILL_OPTIONS, workers=2)
    assert tree_bytes(dst) == tree_bytes(tmp_path / "reference")
