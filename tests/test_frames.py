"""The input side of pack: scan order, conversions, resize modes, filters and skip reasons."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shardgan.frames
from shardgan.frames import Frame, FrameSpec, Skip, is_blank, load_frames, scan
from shardgan.synthetic import game_frame
from tests.conftest import png_bomb, write_video


def _load(path: Path, spec: FrameSpec) -> Frame | Skip:
    (item,) = list(load_frames(path.parent, path.name, spec))
    return item


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def test_scan_is_sorted_recursive_and_case_insensitive(tmp_path: Path) -> None:
    for name in ["b/2.PNG", "a/1.jpg", "a/0.JPEG", "c.bmp", "d.webp", "notes.txt", "z/clip.MP4"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found, skipped = scan(tmp_path)
    assert [p for p, _ in found] == ["a/0.JPEG", "a/1.jpg", "b/2.PNG", "c.bmp", "d.webp", "z/clip.MP4"]
    assert all(size == 1 for _, size in found)
    assert skipped == []


def test_scan_reports_links_loops_and_special_files(tmp_path: Path) -> None:
    _save(tmp_path / "ok.png", Image.fromarray(game_frame(0)))
    (tmp_path / "dangling.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "self.png").symlink_to(tmp_path / "self.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "back").symlink_to(tmp_path)
    os.mkfifo(tmp_path / "pipe.png")
    found, skipped = scan(tmp_path)
    assert [p for p, _ in found] == ["ok.png"]
    reasons = {s.path: s.reason for s in skipped}
    assert reasons["dangling.png"] == "dangling symlink"
    assert reasons["self.png"] == "symlink loop"
    assert reasons["pipe.png"] == "not a regular file"
    assert reasons["sub/back"].startswith("symlink loop")


@pytest.mark.parametrize("channels", [3, 1])
def test_stretch_gives_exact_size_and_matches_pillow(tmp_path: Path, channels: int) -> None:
    source = Image.fromarray(game_frame(3, 160, 120))
    path = _save(tmp_path / "f.png", source)
    frame = _load(path, FrameSpec(88, 66, channels))
    expected = source.resize((88, 66), Image.Resampling.BILINEAR, reducing_gap=3.0).convert("RGB" if channels == 3 else "L")
    assert frame.pixels.shape == (66, 88, channels)
    assert np.array_equal(frame.pixels.reshape(np.asarray(expected).shape), np.asarray(expected))


def test_crop_keeps_centre_and_pad_adds_black_borders(tmp_path: Path) -> None:
    # 120x40 image: red | green | blue thirds. Square crop sees only green; pad keeps all three.
    bands = np.zeros((40, 120, 3), np.uint8)
    bands[:, :40, 0] = bands[:, 40:80, 1] = bands[:, 80:, 2] = 255
    path = _save(tmp_path / "bands.png", Image.fromarray(bands))
    crop = _load(path, FrameSpec(20, 20, mode="crop")).pixels
    assert crop.shape == (20, 20, 3) and (crop[:, 2:-2, 1] > 200).all() and (crop[:, 2:-2, [0, 2]] < 50).all()
    pad = _load(path, FrameSpec(30, 30, mode="pad")).pixels
    assert pad.shape == (30, 30, 3)
    assert (pad[:8] == 0).all() and (pad[-8:] == 0).all()  # 30x10 content centred, black above/below
    assert pad[15, 3, 0] > 200 and pad[15, 15, 1] > 200 and pad[15, 26, 2] > 200


def test_portrait_input_is_resized_not_rejected(tmp_path: Path) -> None:
    path = _save(tmp_path / "tall.png", Image.fromarray(game_frame(1, 60, 160)))
    for mode in ("stretch", "crop", "pad"):
        assert _load(path, FrameSpec(64, 48, mode=mode)).pixels.shape == (48, 64, 3)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.fromarray(game_frame(2, 80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(tmp_path / "rot.jpg", image, exif=exif, quality=95)
    frame = _load(path, FrameSpec(40, 80, mode="stretch", channels=3))  # displayed as 40 wide, 80 tall
    upright = np.asarray(image.transpose(Image.Transpose.ROTATE_270))
    assert frame.pixels.shape == (80, 40, 3)
    assert np.abs(frame.pixels.astype(int) - upright.astype(int)).mean() < 12


def test_jpeg_draft_fast_path_stays_close_to_full_decode(tmp_path: Path) -> None:
    source = Image.fromarray(game_frame(4, 640, 480))
    path = _save(tmp_path / "big.jpg", source, quality=95)
    fast = _load(path, FrameSpec(88, 66)).pixels.astype(int)
    full = np.asarray(Image.open(path).convert("RGB").resize((88, 66), Image.Resampling.BILINEAR)).astype(int)
    assert fast.shape == (66, 88, 3) and np.abs(fast - full).mean() < 6


def test_modes_are_converted(tmp_path: Path) -> None:
    rgb = Image.fromarray(game_frame(5, 64, 48))
    spec = FrameSpec(32, 24)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)  # fully transparent -> composited on black
    sixteen = Image.fromarray(np.full((48, 64), 0x8000, np.uint16))
    palette_alpha = rgb.convert("P")
    palette_alpha.info["transparency"] = 0
    cases = {
        "gray.png": rgb.convert("L"),
        "la.png": rgb.convert("LA"),
        "palette.png": rgb.convert("P"),
        "palette_alpha.png": palette_alpha,
        "rgba.png": rgba,
        "bilevel.png": rgb.convert("1"),
        "sixteen.png": sixteen,
        "cmyk.jpg": rgb.convert("CMYK"),
    }
    for name, image in cases.items():
        frame = _load(_save(tmp_path / name, image), spec)
        assert isinstance(frame, Frame), (name, frame)
        assert frame.pixels.shape == (24, 32, 3) and frame.pixels.dtype == np.uint8, name
    assert (_load(tmp_path / "rgba.png", spec).pixels == 0).all()
    assert (_load(tmp_path / "sixteen.png", spec).pixels == 128).all()  # scaled, not clipped to 255


def test_bad_inputs_become_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = io.BytesIO()
    Image.fromarray(game_frame(6)).save(good, format="PNG")
    jpeg = io.BytesIO()
    Image.fromarray(game_frame(6)).save(jpeg, format="JPEG")
    files = {
        "empty.png": b"",
        "random.png": np.random.default_rng(0).bytes(3000),
        "truncated.png": good.getvalue()[: len(good.getvalue()) // 2],
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "bomb.png": png_bomb(100_000, 100_000),
        "moderate_bomb.png": png_bomb(8000, 8000),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    _save(tmp_path / "tiny.png", Image.fromarray(game_frame(7, 8, 6)))
    monkeypatch.setattr(shardgan.frames, "MAX_PIXELS", 50_000_000)  # below Pillow's own limit: shardgan's check must fire
    spec = FrameSpec(64, 48)
    reasons = {p.name: _load(p, spec).reason for p in tmp_path.iterdir()}
    assert reasons["empty.png"] == "empty file"
    assert reasons["random.png"].startswith("not an image")
    assert reasons["truncated.png"].startswith("corrupt:")
    assert reasons["truncated.jpg"].startswith("corrupt:")
    assert reasons["bomb.png"].startswith("decompression bomb")
    assert reasons["moderate_bomb.png"].startswith("decompression bomb: 8000x8000")
    assert reasons["tiny.png"].startswith("too small")
    assert _load(tmp_path / "gone.png", spec) == Skip("gone.png", "vanished: deleted after the scan")


def test_blank_filter() -> None:
    black = np.zeros((24, 32, 3), np.uint8)
    assert is_blank(black, 2.0) and is_blank(black + 255, 2.0)
    assert is_blank(black + np.uint8(1) * (np.arange(32) % 2 == 0)[None, :, None], 2.0)  # faint noise
    assert not is_blank(game_frame(0, 32, 24), 2.0)
    assert not is_blank(black, 0)  # 0 disables the filter


def test_blank_filter_shortcut_agrees_with_the_full_std() -> None:
    rng = np.random.default_rng(0)
    for spread in [0, 1, 2, 3, 4, 5, 6, 8, 16, 64, 255]:
        for _ in range(20):
            pixels = rng.integers(0, spread + 1, (24, 32, 3)).astype(np.uint8)
            sparse = np.zeros_like(pixels)
            sparse.reshape(-1)[rng.integers(0, pixels.size, 3)] = spread  # outliers the subset may miss
            for frame in (pixels, sparse):
                for threshold in (0.5, 1.0, 2.0, 4.0):
                    assert is_blank(frame, threshold) == (float(frame.std()) < threshold)


def test_video_every_kth_frame_and_damaged_video(tmp_path: Path) -> None:
    write_video(tmp_path / "clip.mp4", 12)
    items = list(load_frames(tmp_path, "clip.mp4", FrameSpec(32, 24, every=3)))
    assert [f.index for f in items] == [0, 3, 6, 9] and all(f.pixels.shape == (24, 32, 3) for f in items)
    data = (tmp_path / "clip.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # mp4 index is at the end: unreadable
    (skip,) = list(load_frames(tmp_path, "cut.mp4", FrameSpec(32, 24)))
    assert skip.path == "cut.mp4" and skip.reason.startswith("corrupt video: ") and str(tmp_path) not in skip.reason
