"""`shardgan pack`: what goes in comes out (read with plain webdataset), byte-reproducibly."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image, JpegImagePlugin

import shardgan.pack
from shardgan import cli
from shardgan.chunks import WORKLIST_VERSION, EncodeOptions
from shardgan.cut import CutOptions
from shardgan.errors import DataError
from shardgan.frames import FrameSpec
from shardgan.manifest import load_manifest
from shardgan.pack import PackOptions, pack_dataset
from shardgan.synthetic import write_frames

from .conftest import PYTHON, write_video
from .pack_runs import SMALL, cli_error, pack, read_webdataset, tree_bytes

SHARDGAN = str(Path(PYTHON).parent / "shardgan")

@pytest.mark.parametrize("image_format", ["png", "raw"])
def test_samples_read_back_with_webdataset_match_inputs(tmp_path: Path, image_format: str) -> None:
    paths = write_frames(tmp_path / "src", 30)
    pack(tmp_path / "src", tmp_path / "dst", PackOptions(EncodeOptions(FrameSpec(40, 30), image_format=image_format), CutOptions(samples_per_shard=8)))
    samples = read_webdataset(tmp_path / "dst")
    assert len(samples) == 30 and len(load_manifest(tmp_path / "dst").split("train").shards) == 4
    ext = "png" if image_format == "png" else "npy"
    by_src = {}
    for sample in samples:
        meta = json.loads(sample["json"])
        data = sample[ext]
        by_src[meta["src"]] = np.load(io.BytesIO(data)) if ext == "npy" else np.asarray(Image.open(io.BytesIO(data)))
    assert sorted(by_src) == sorted(p.relative_to(tmp_path / "src").as_posix() for p in paths)
    for path in paths:
        expected = Image.open(path).convert("RGB").resize((40, 30), Image.Resampling.BILINEAR, reducing_gap=3.0)
        assert np.array_equal(by_src[path.relative_to(tmp_path / "src").as_posix()], np.asarray(expected))
    keys = [s["__key__"] for s in samples]
    assert keys != sorted(keys), "samples must be shuffled globally before the shard cut"


def test_byte_identical_across_runs_and_worker_counts(tmp_path: Path) -> None:
    write_frames(tmp_path / "src", 40)
    options = PackOptions(EncodeOptions(FrameSpec(40, 30)), CutOptions(samples_per_shard=7, val=0.2, seed=3))
    pack(tmp_path / "src", tmp_path / "one", options, workers=1)
    pack(tmp_path / "src", tmp_path / "two", options, workers=2)
    pack(tmp_path / "src", tmp_path / "again", options, workers=2)
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two") == tree_bytes(tmp_path / "again")
    assert "manifest.json" in tree_bytes(tmp_path / "one") and not (tmp_path / "one" / ".work").exists()


def test_parts_then_merge_equal_a_single_pack(tmp_path: Path) -> None:
    write_frames(tmp_path / "src", 40)
    pack(tmp_path / "src", tmp_path / "single")
    pack(tmp_path / "src", tmp_path / "parts", part=(1, 3))
    with pytest.raises(DataError, match=r"missing \d+ of 5 chunks \(chunk-000000"):
        pack(tmp_path / "src", tmp_path / "parts", merge=True)
    pack(tmp_path / "src", tmp_path / "parts", part=(0, 3))
    pack(tmp_path / "src", tmp_path / "parts", part=(2, 3), workers=2)
    pack(tmp_path / "src", tmp_path / "parts", merge=True)
    assert tree_bytes(tmp_path / "parts") == tree_bytes(tmp_path / "single")


def test_rerun_is_a_no_op_and_a_different_dataset_needs_overwrite(tmp_path: Path) -> None:
    write_frames(tmp_path / "src", 20)
    pack(tmp_path / "src", tmp_path / "dst")
    before = tree_bytes(tmp_path / "dst")
    pack(tmp_path / "src", tmp_path / "dst")
    assert tree_bytes(tmp_path / "dst") == before
    reseeded = PackOptions(EncodeOptions(FrameSpec(40, 30)), CutOptions(samples_per_shard=8, seed=9))
    with pytest.raises(DataError, match="already holds a different dataset .*seed.*--overwrite"):
        pack(tmp_path / "src", tmp_path / "dst", reseeded)
    write_frames(tmp_path / "src", 1, start=20)
    with pytest.raises(DataError, match="inputs_sha256"):
        pack(tmp_path / "src", tmp_path / "dst")
    pack(tmp_path / "src", tmp_path / "dst", reseeded, overwrite=True)
    pack(tmp_path / "src", tmp_path / "fresh", reseeded)
    assert tree_bytes(tmp_path / "dst") == tree_bytes(tmp_path / "fresh")


def test_cli_argument_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, empty = tmp_path / "src", tmp_path / "empty"
    write_frames(src, 3)
    empty.mkdir()
    (empty / "readme.txt").write_text("no frames here")
    pack(src, tmp_path / "dst")
    capsys.readouterr()  # the progress bars of that pack
    assert "no image or video files" in cli_error(capsys, "pack", str(empty), str(tmp_path / "d"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "noise.png").write_bytes(b"not a png")
    assert "no usable frame among 1 inputs (skipped: 1 not an image" in cli_error(capsys, "pack", str(tmp_path / "junk"), str(tmp_path / "j"))
    assert "inside SRC" in cli_error(capsys, "pack", str(src), str(src / "shards"))
    assert "different dataset" in cli_error(capsys, "pack", str(src), str(tmp_path / "dst"), "--size", "20x10")
    assert "--part" in cli_error(capsys, "pack", str(src), str(tmp_path / "d"), "--part", "3/2")
    assert "--val" in cli_error(capsys, "pack", str(src), str(tmp_path / "d"), "--val", "x")
    assert "--shard-size: expected a size like 200GB" in cli_error(capsys, "pack", str(src), str(tmp_path / "d"), "--shard-size", "12 parsecs")
    assert "--shard-size must be positive, got 0" in cli_error(capsys, "pack", str(src), str(tmp_path / "d"), "--shard-size", "0")
    assert "--channels" in cli_error(capsys, "pack", str(src), str(tmp_path / "d"), "--channels", "2")
    assert "--chroma must be one of 444|420" in cli_error(capsys, "pack", str(src), str(tmp_path / "d"), "--chroma", "422")
    assert "no manifest.json" in cli_error(capsys, "inspect", str(tmp_path))


@pytest.mark.multiproc
@pytest.mark.slow
def test_cli_subprocess_errors_are_one_line(tmp_path: Path) -> None:
    write_frames(tmp_path / "src", 2)
    # One real process (the console script's start-up is slow: it imports torch via webdataset).
    result = subprocess.run([SHARDGAN, "pack", str(tmp_path / "src"), str(tmp_path / "d"), "--size", "abc"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "--size" in result.stderr and not (tmp_path / "d").exists()


def test_videos_are_packed_every_kth_frame_with_frame_keys(tmp_path: Path) -> None:

    write_frames(tmp_path / "src", 4)
    write_video(tmp_path / "src" / "speedrun.mkv", 10)
    pack(tmp_path / "src", tmp_path / "dst", PackOptions(EncodeOptions(FrameSpec(40, 30, every=4))))
    metas = {s["__key__"]: json.loads(s["json"]) for s in read_webdataset(tmp_path / "dst")}
    video = {k: m for k, m in metas.items() if m["src"] == "speedrun.mkv"}
    assert sorted(video) == ["000000004_0000000", "000000004_0000004", "000000004_0000008"]
    assert [video[k]["frame"] for k in sorted(video)] == [0, 4, 8] and len(metas) == 7


def test_selection_uses_the_workers_records_and_chunks_are_published_once_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_frames(tmp_path / "src", 40)
    pack(tmp_path / "src", tmp_path / "reference")
    published: list[str] = []

    def publish(tmp: str, path: str) -> None:
        assert Path(tmp).exists() and not Path(path).exists(), "a chunk gets its final name only once complete"
        published.append(Path(path).name)
        real_publish(tmp, path)

    def no_read_back(path: Path) -> None:
        raise AssertionError(f"read back {path}: a fresh pack selects from the records the workers return")

    real_publish = shardgan.pack.publish
    monkeypatch.setattr(shardgan.pack, "publish", publish)
    monkeypatch.setattr(shardgan.pack, "read_chunk_records", no_read_back)
    for workers in (1, 2):
        published.clear()
        pack(tmp_path / "src", tmp_path / f"dst{workers}", workers=workers, keep_work=True)
        work = tmp_path / f"dst{workers}" / ".work"
        assert published == sorted(p.name for p in work.glob("chunk-*.bin")) and len(published) == 5
        assert not list(work.glob(".*.tmp"))
        shutil.rmtree(work)
        assert tree_bytes(tmp_path / f"dst{workers}") == tree_bytes(tmp_path / "reference")


def test_unfinished_work_of_another_worklist_version_is_not_mixed_in(tmp_path: Path) -> None:
    write_frames(tmp_path / "src", 40)
    pack(tmp_path / "src", tmp_path / "dst", part=(0, 2))
    path = tmp_path / "dst" / ".work" / shardgan.pack.WORKLIST_NAME
    path.write_text(path.read_text().replace(f'"version":{WORKLIST_VERSION}', '"version":1'))
    with pytest.raises(DataError, match="unfinished pack of different inputs or options"):
        pack(tmp_path / "src", tmp_path / "dst")


def test_pack_args_keep_the_flat_layout_every_manifest_has(tmp_path: Path) -> None:
    """PackOptions holds a FrameSpec, but the manifest records its fields beside the others, as
    before: a rerun on a dataset packed by an earlier shardgan still finds it complete."""
    options = PackOptions(EncodeOptions(FrameSpec(40, 30, channels=1, mode="crop", every=2), "raw", 90, 1.5), CutOptions(7, 0.25, 9, 1000))
    assert options.args() == {
        "width": 40, "height": 30, "channels": 1, "mode": "crop", "every": 2, "image_format": "raw", "quality": 90,
        "blank_threshold": 1.5, "seed": 7, "val": 0.25, "samples_per_shard": 9, "shard_size_bytes": 1000,
    }  # fmt: skip
    assert options.encode.args() == {"width": 40, "height": 30, "channels": 1, "mode": "crop", "every": 2, "image_format": "raw", "quality": 90, "blank_threshold": 1.5}
    write_frames(tmp_path / "src", 12)
    pack(tmp_path / "src", tmp_path / "dst")
    manifest = load_manifest(tmp_path / "dst")
    assert manifest.pack_args == {**SMALL.args(), "inputs_sha256": manifest.pack_args["inputs_sha256"]}


def test_chroma_is_recorded_and_changes_the_jpg_bytes(tmp_path: Path) -> None:
    write_frames(tmp_path / "src", 10)
    for chroma in ("444", "420"):
        pack(tmp_path / "src", tmp_path / chroma, PackOptions(EncodeOptions(FrameSpec(40, 30), "jpg", 95, chroma=chroma), CutOptions(samples_per_shard=8)))
    manifests = [load_manifest(tmp_path / c) for c in ("444", "420")]
    assert [m.pack_args["chroma"] for m in manifests] == ["444", "420"]
    for chroma, code in (("444", 0), ("420", 2)):  # Pillow's codes for the subsampling
        for row in read_webdataset(tmp_path / chroma):
            with Image.open(io.BytesIO(row["jpg"])) as image:
                assert JpegImagePlugin.get_sampling(image) == code


# -- issue 26: hints that are right, and nothing left behind --------------------------------


def _pack_cli(src: Path, dst: Path, *flags: str, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = cli.main(["pack", str(src), str(dst), *flags])
    return code, capsys.readouterr().err


def test_a_size_larger_than_the_frames_allow_names_the_size_and_leaves_no_work_folder(frames_dir: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "out"
    code, err = _pack_cli(frames_dir, dst, "--size", "1000x1000", capsys=capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "--size 1000x1000 would upscale them more than 2x: pick a smaller --size" in err
    assert not dst.exists(), "a pack that kept nothing leaves no DST/.work behind"
    code, err = _pack_cli(frames_dir, dst, "--size", "100000x100000", capsys=capsys)
    assert code == 2 and "each side must be 8..4096" in err and not dst.exists(), err


def test_a_size_too_small_to_train_on_is_refused_before_packing(frames_dir: Path, tmp_path: Path, capsys) -> None:
    code, err = _pack_cli(frames_dir, tmp_path / "out", "--size", "1x1", capsys=capsys)
    assert code == 2 and "--size 1x1: each side must be 8..4096" in err and not (tmp_path / "out").exists(), err
    assert _pack_cli(frames_dir, tmp_path / "out", "--size", "8x8", capsys=capsys)[0] == 0


def test_a_stretch_that_changes_the_aspect_ratio_is_pointed_out_with_a_size_that_keeps_it(frames_dir: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(["pack", str(frames_dir), str(tmp_path / "square"), "--size", "64x64"]) == 0  # 160x120 frames
    out = capsys.readouterr().out
    assert "note: --mode stretch changes the aspect ratio by -25% (160x120 frames to 64x64); --size 64x48 (or 64xauto) keeps it" in out, out
    for flags in (["--size", "64x48"], ["--size", "62x48"], ["--size", "64x64", "--mode", "crop"]):  # 62x48: 3 % off
        assert cli.main(["pack", str(frames_dir), str(tmp_path / "-".join(flags)), *flags]) == 0
        assert "aspect ratio" not in capsys.readouterr().out, flags


@pytest.mark.parametrize(("size", "stored"), [("88xauto", (88, 66)), ("autox48", (64, 48))])
def test_an_auto_side_follows_the_frames_aspect_ratio(frames_dir: Path, tmp_path: Path, size: str, stored: tuple[int, int], capsys) -> None:
    assert cli.main(["pack", str(frames_dir), str(tmp_path / "out"), "--size", size]) == 0
    manifest = load_manifest(tmp_path / "out")
    assert (manifest.width, manifest.height) == stored and "aspect ratio" not in capsys.readouterr().out
