"""Make synthetic stand-ins for two kinds of game frames the demo preset is tuned on besides Doom.

- `scroller`: a side-view platformer. The camera scrolls right through a seeded world (parallax
  hills, brick ground with gaps, pipes, bushes), a player jumps, enemies walk, a HUD counts.
  Everything but the sky gradient slides between frames; the layout (sky, horizon, ground band)
  repeats.
- `static`: a mostly static screen with small moving parts, like the puzzle or RPG-menu screen
  issue 24's default collapsed on. A board, a side panel and a border that never move within an
  episode (one of a few layouts), a few 8x8 sprites that bounce, a blinking cursor, a score.
  A collapsed G that draws the board alone still looks plausible, which is what makes it hard.

Generated, never shipped: deterministic given --seed, one folder per episode of PNGs for
`shardgan pack`, written by tools/make_demo_frames.py's driver with its guarantees: each episode
complete or absent (a killed run leaves none half written), and a rerun writes only the missing.

    python tools/make_tuning_frames.py scroller data/scroller_frames --episodes 15 --frames-per-episode 200
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shardgan.cli import parse_frame_size
from shardgan.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file or loaded by a test alike

from make_demo_frames import FrameSource, write_missing_episodes  # noqa: E402

Frame = np.ndarray
"""(H, W, 3) uint8."""


def _rect(frame: Frame, x: int, y: int, w: int, h: int, colour) -> None:
    """Fill a rectangle, clipped to the frame (sprites may be partly off screen)."""
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x0 < x1 and y0 < y1:
        frame[y0:y1, x0:x1] = colour


def _digits(frame: Frame, x: int, y: int, value: int, colour, count: int = 6) -> None:
    """A score as blocky 3x5 digits (each digit's bars on or off by its bits: legible enough)."""
    for i, ch in enumerate(f"{value % 10**count:0{count}d}"):
        bits = (int(ch) * 37 + 11) % 127 | 1
        for b in range(7):
            if bits >> b & 1:
                bx, by = (0, 0, 2, 0, 0, 2, 0)[b], (0, 2, 0, 4, 0, 2, 2)[b]
                _rect(frame, x + i * 5 + bx, y + by, 3 if bx == 0 else 1, 1 if bx == 0 else 3, colour)


def scroller_episode(episode: int, seed: int, num_frames: int, size: tuple[int, int]) -> Iterator[Frame]:
    """A level scrolled right at a steady pace; every saved frame is 3 game frames apart."""
    width, height = size
    rng = np.random.default_rng([seed, episode, 1])
    sky_top, sky_bottom = rng.integers(40, 120, 3), rng.integers(150, 250, 3)
    hill = rng.integers(30, 120, 3)
    ground_y = height - height // 6
    brick, mortar = rng.integers(120, 220, 3), rng.integers(40, 90, 3)
    world = width * 40
    gaps = sorted(int(g) for g in rng.integers(width, world, 12))
    pipes = sorted(int(p) for p in rng.integers(width // 2, world, 30))
    bushes = sorted(int(b) for b in rng.integers(0, world, 60))
    enemies = rng.integers(width, world, 40)
    player_colour, enemy_colour = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ys = np.arange(height)[:, None]
    sky = (sky_top + (sky_bottom - sky_top) * ys / height).astype(np.uint8)
    xs = np.arange(width)
    speed = int(rng.integers(2, 5))
    for t in range(num_frames):
        cam = t * 3 * speed
        frame = np.repeat(sky[:, None, :], width, axis=1)
        hills = (ground_y - 18 - 14 * np.sin((xs + cam // 4) / 23.0) - 6 * np.sin((xs + cam // 4) / 7.0)).astype(int)
        frame[ys >= hills[None, :]] = hill
        for b in bushes:
            _rect(frame, b - cam // 2, ground_y - 8, 14, 8, (30, 150 + b % 80, 40))
        frame[ground_y:] = brick
        frame[ground_y::5] = mortar
        for col in range(-((cam) % 10), width, 10):
            frame[ground_y:, max(col, 0)] = mortar
        for g in gaps:
            _rect(frame, g - cam, ground_y, 16, height - ground_y, sky_bottom)
        for p in pipes:
            ph = 10 + p % 20
            _rect(frame, p - cam, ground_y - ph, 14, ph, (20, 170, 30))
            _rect(frame, p - cam - 2, ground_y - ph, 18, 4, (40, 200, 60))
        for i, e in enumerate(enemies):
            ex = int(e) - cam + int(12 * np.sin((t + i * 5) / 4.0))
            _rect(frame, ex, ground_y - 7, 8, 7, enemy_colour)
            _rect(frame, ex + 1, ground_y - 6, 2, 2, (255, 255, 255))
        phase = (t * 3) % 40
        jump = int(max(0, 30 * np.sin(np.pi * phase / 40))) if (t // 13 + episode) % 2 else 0
        px, py = width // 3, ground_y - 14 - jump
        _rect(frame, px, py, 8, 14, player_colour)
        _rect(frame, px, py, 8, 4, (230, 190, 150))
        _digits(frame, 4, 3, cam // 8, (255, 255, 255))
        _rect(frame, width - 40, 3, 36 * (num_frames - t) // num_frames, 4, (250, 220, 0))
        yield frame


LAYOUTS = 4
"""Distinct static screens: each episode uses layout `episode % LAYOUTS`."""


def static_episode(episode: int, seed: int, num_frames: int, size: tuple[int, int]) -> Iterator[Frame]:
    """One static screen per layout; only the sprites, the cursor and the score move."""
    width, height = size
    layout = np.random.default_rng([seed, episode % LAYOUTS, 2])
    rng = np.random.default_rng([seed, episode, 3])
    base = np.empty((height, width, 3), np.uint8)
    base[:] = layout.integers(0, 80, 3)
    board_w, cell = width * 2 // 3, 10
    tiles = layout.integers(40, 230, (6, 3))
    for by in range(8, height - 8, cell):
        for bx in range(8, board_w, cell):
            _rect(base, bx, by, cell - 1, cell - 1, tiles[layout.integers(0, len(tiles))])
    _rect(base, board_w + 6, 8, width - board_w - 14, height - 16, layout.integers(100, 200, 3))
    _rect(base, board_w + 10, 12, width - board_w - 22, 20, (10, 10, 30))
    base[:3], base[-3:], base[:, :3], base[:, -3:] = 255, 255, 255, 255
    sprites = rng.integers(1, 4 + episode % 3)
    pos = rng.uniform([10, 10], [board_w - 10, height - 18], (sprites, 2))
    vel = rng.uniform(-3, 3, (sprites, 2))
    colours = rng.integers(0, 256, (sprites, 3))
    score = int(rng.integers(0, 5000))
    for t in range(num_frames):
        frame = base.copy()
        pos += vel
        for axis, hi in ((0, board_w - 8), (1, height - 16)):
            out = (pos[:, axis] < 8) | (pos[:, axis] > hi)
            vel[out, axis] *= -1
            pos[:, axis] = pos[:, axis].clip(8, hi)
        for (x, y), c in zip(pos.astype(int), colours):
            _rect(frame, x, y, 8, 8, c)
            _rect(frame, x + 2, y + 2, 4, 4, 255 - c)
        score += int(rng.integers(0, 30))
        _digits(frame, board_w + 12, 18, score, (255, 255, 0), count=5)
        if t % 4 < 2:
            _rect(frame, board_w + 12, 40 + 8 * (t // 16 % 6), 6, 6, (255, 255, 255))
        yield frame


KINDS: dict[str, FrameSource] = {
    "scroller": scroller_episode,
    "static": static_episode,
}


def frame_size(text: str) -> tuple[int, int]:
    """--size as `shardgan pack` reads it, both sides given: there are no frames to take an aspect ratio from."""
    try:
        width, height = parse_frame_size(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if width is None or height is None:
        raise argparse.ArgumentTypeError(f"--size needs both sides here, e.g. 160x120; got {text!r}")
    return width, height


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("out", type=Path, help="output folder (one subfolder per episode)")
    parser.add_argument("--episodes", type=int, default=15)
    parser.add_argument("--frames-per-episode", type=int, default=200)
    parser.add_argument("--size", type=frame_size, default="160x120", help="WIDTHxHEIGHT")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.frames_per_episode < 1:
        parser.error("need --episodes >= 1, --frames-per-episode >= 1")
    names = [f"ep{episode:03d}_{args.kind}" for episode in range(args.episodes)]
    written = write_missing_episodes(args.out, names, args.frames_per_episode, args.seed, args.size, lambda: KINDS[args.kind])
    if written:
        print(f"wrote {written} {args.kind} frames to {args.out}")


if __name__ == "__main__":
    main()
