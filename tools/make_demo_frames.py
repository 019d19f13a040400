"""Make the demo dataset: real Doom (Freedoom) frames from `vizdoom`, as full-size PNGs.

Plays a few Freedoom maps with a simple wandering policy and saves every k-th frame,
one folder per episode, like the original project's folders of frames cut from speedrun videos.
A few black/white screens and repeated (paused) frames are mixed in so `shardgan pack`'s
blank and duplicate filters have something to remove.

Deterministic given --seed. Cached: an episode folder that exists is complete, because
each episode is written into `<out>.partial/` and renamed into `<out>/` only when done,
so a killed run never leaves half an episode where `shardgan pack` would read it.
tools/make_tuning_frames.py writes its episodes through the same `write_missing_episodes`.

When `vizdoom` cannot be imported or started (install it: `pip install -e '.[demo]'`),
procedural game-like frames stand in, with a message saying so.

    python tools/make_demo_frames.py data/demo_frames --episodes 16 --frames-per-episode 200
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

# Freedoom 1 (Doom-style episodes) and Freedoom 2 (MAPxx) levels; both WADs ship in the wheel.
MAPS = [("freedoom1.wad", f"E{e}M{m}") for e in (1, 2, 3, 4) for m in (1, 2, 3, 4, 5, 6)] + [
    ("freedoom2.wad", f"MAP{m:02d}") for m in range(1, 21)
]
RESOLUTIONS = {"320x240": (320, 240), "640x480": (640, 480)}
TICS_PER_ACTION = 4
PAUSE_REPEATS = 3
"""A 'paused game' run: the same frame saved this many times in a row (for the duplicate filter)."""

FrameSource = Callable[[int, int, int, tuple[int, int]], Iterator[np.ndarray]]
"""(episode, seed, num_frames, (width, height)) -> num_frames (H, W, 3) uint8 frames."""


def episode_map(episode: int, seed: int) -> tuple[str, str]:
    """Episodes walk through the maps in a seed-shuffled order."""
    order = np.random.default_rng(seed).permutation(len(MAPS))
    return MAPS[order[episode % len(MAPS)]]


def episode_name(episode: int, seed: int) -> str:
    wad, level = episode_map(episode, seed)
    return f"ep{episode:03d}_{Path(wad).stem}_{level}"


class Wanderer:
    """Scripted explorer: run forward, turn now and then, turn away when stuck, open doors, shoot.

    Buttons (in order): MOVE_FORWARD, TURN_LEFT, TURN_RIGHT, ATTACK, USE, SPEED.
    """

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.turn = 0  # -1 left, +1 right, 0 straight
        self.steps_left = 0
        self.trail: list[tuple[float, float]] = []

    def act(self, x: float, y: float) -> list[float]:
        self.trail = (self.trail + [(x, y)])[-4:]
        stuck = len(self.trail) == 4 and abs(self.trail[0][0] - x) + abs(self.trail[0][1] - y) < 24
        if stuck and self.turn == 0:  # facing a wall: turn well away from it
            self.turn, self.steps_left = int(self.rng.choice([-1, 1])), int(self.rng.integers(8, 20))
            self.trail.clear()
        elif self.steps_left <= 0:
            self.turn = int(self.rng.choice([-1, 0, 0, 0, 1]))
            self.steps_left = int(self.rng.integers(3, 10) if self.turn else self.rng.integers(6, 30))
        self.steps_left -= 1
        forward = 1.0 if self.turn == 0 or self.rng.random() < 0.4 else 0.0
        return [
            forward,
            float(self.turn < 0),
            float(self.turn > 0),
            float(self.rng.random() < 0.05),
            float(self.rng.random() < 0.15),
            1.0,
        ]


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def doom_frames(episode: int, seed: int, num_frames: int, size: tuple[int, int], every: int) -> Iterator[np.ndarray]:
    """Play one Freedoom map headless (no window, no audio) and yield every `every`-th action's frame."""
    import vizdoom as vzd

    wad, level = episode_map(episode, seed)
    with tempfile.TemporaryDirectory(prefix="vizdoom-") as scratch:
        # vizdoom makes _vizdoom/ in the current directory, and its engine, started there by init,
        # writes _vizdoom.ini there on closing: a scratch one, so the caller's is left as it was.
        with working_directory(Path(scratch)):
            game = vzd.DoomGame()
            game.set_doom_game_path(os.path.join(os.path.dirname(vzd.__file__), wad))
            game.set_doom_map(level)
            game.set_screen_resolution(getattr(vzd.ScreenResolution, f"RES_{size[0]}X{size[1]}"))
            game.set_screen_format(vzd.ScreenFormat.RGB24)
            game.set_window_visible(False)
            game.set_sound_enabled(False)
            game.set_audio_buffer_enabled(False)
            game.set_render_hud(True)
            game.set_render_messages(False)
            game.set_mode(vzd.Mode.PLAYER)
            game.set_episode_timeout(0)
            game.set_seed(seed * 1000 + episode)
            B = vzd.Button
            game.set_available_buttons([B.MOVE_FORWARD, B.TURN_LEFT, B.TURN_RIGHT, B.ATTACK, B.USE, B.SPEED])
            game.set_available_game_variables([vzd.GameVariable.POSITION_X, vzd.GameVariable.POSITION_Y])
            game.init()
        try:
            policy = Wanderer(np.random.default_rng([seed, episode]))
            made = 0
            step = 0
            while made < num_frames:
                if game.is_episode_finished():  # died or left the level: start the map again
                    game.new_episode()
                state = game.get_state()
                if step % every == 0:
                    yield state.screen_buffer.copy()
                    made += 1
                x, y = state.game_variables[:2]
                game.make_action(policy.act(float(x), float(y)), TICS_PER_ACTION)
                step += 1
        finally:
            game.close()


def procedural_frames(episode: int, seed: int, num_frames: int, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Stand-in when vizdoom is missing: a scrolling sky/ground scene with blocks and a HUD bar."""
    width, height = size
    rng = np.random.default_rng([seed, episode])
    sky, ground = rng.integers(40, 230, (2, 3))
    blocks = [(int(rng.integers(0, 4 * width)), int(rng.integers(height // 4, height // 2)), rng.integers(0, 256, 3)) for _ in range(12)]
    yy, xx = np.mgrid[:height, :width]
    for t in range(num_frames):
        horizon = int(height * 0.6 + 6 * np.sin(t / 9))
        frame = np.where((yy < horizon)[..., None], sky, ground).astype(np.uint8)
        frame[yy >= horizon] = (frame[yy >= horizon] * (0.7 + 0.3 * ((xx[yy >= horizon] + 4 * t) // 16 % 2))[:, None]).astype(np.uint8)
        for bx, bh, colour in blocks:
            x0 = (bx - 4 * t) % (4 * width) - width // 2
            frame[max(0, horizon - bh) : horizon, max(0, x0) : max(0, x0 + width // 10)] = colour
        frame[-height // 8 :] = (60, 60, 60)
        frame[-height // 8 :, : (t * 3) % width] = (200, 40, 40)
        yield frame


def with_screens(frames: Iterator[np.ndarray], episode: int, num_frames: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Mix in what real captures have: black loading screens, a white flash, a paused stretch."""
    first = next(frames)
    blank = {0: [np.zeros_like(first)] * 2, 1: [np.full_like(first, 255)]}.get(episode % 4, [])
    pause_at = int(rng.integers(len(blank) + 1, max(len(blank) + 2, num_frames - PAUSE_REPEATS)))
    out = 0
    for frame in [*blank, first]:
        yield frame
        out += 1
    for frame in frames:
        if out >= num_frames:
            return
        repeats = PAUSE_REPEATS if out == pause_at else 1
        for _ in range(min(repeats, num_frames - out)):
            yield frame
            out += 1


def write_episode(directory: Path, frames: Iterator[np.ndarray], bar: tqdm) -> None:
    directory.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(directory / f"frame_{i:05d}.png", compress_level=1)
        bar.update(1)


def write_missing_episodes(
    out: Path, names: list[str], frames_per_episode: int, seed: int, size: tuple[int, int], open_source: Callable[[], FrameSource]
) -> int:
    """Write episode `i` into `out/names[i]` where that folder lacks its frames_per_episode PNGs;
    returns how many frames were written now.

    Each episode goes into `<out>.partial/<name>` and is renamed into `out` once complete, so a
    killed run leaves no half episode where `shardgan pack` reads, and its rerun redoes only the
    missing ones. `open_source` is called only when some are missing (vizdoom's starts the engine).
    """
    out = out.resolve()  # `.` too has a name to put `.partial` beside
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed run
    out.mkdir(parents=True, exist_ok=True)
    todo = [ep for ep, name in enumerate(names) if len(list((out / name).glob("*.png"))) != frames_per_episode]
    if not todo:
        print(f"{out}: all {len(names)} episodes present ({len(names) * frames_per_episode} frames), nothing to do")
        return 0
    source = open_source()
    partial.mkdir()
    with tqdm(total=len(todo) * frames_per_episode, unit="frame", desc=out.name) as bar:
        for ep in todo:
            write_episode(partial / names[ep], source(ep, seed, frames_per_episode, size), bar)
            shutil.rmtree(out / names[ep], ignore_errors=True)  # an incomplete folder from older args
            os.replace(partial / names[ep], out / names[ep])
    partial.rmdir()
    return len(todo) * frames_per_episode


def pick_source(every: int) -> tuple[FrameSource, str]:
    """vizdoom if it imports and starts here, else the procedural stand-in (with the reason)."""
    try:
        import vizdoom  # noqa: F401

        probe = doom_frames(0, 0, 1, (320, 240), every)
        next(probe)
        probe.close()
    except Exception as e:  # ImportError, or the engine failing to start on this machine
        return procedural_frames, f"{type(e).__name__}: {e}".splitlines()[0]
    return (lambda ep, seed, n, size: doom_frames(ep, seed, n, size, every)), ""


def demo_source(every: int) -> FrameSource:
    """pick_source's frames (saying so when they are the stand-in) with with_screens' screens mixed in."""
    source, why_not = pick_source(every)
    if why_not:
        print(
            f"warning: vizdoom is not usable here ({why_not}); writing PROCEDURAL stand-in frames, "
            "not real game frames. Install it with: pip install -e '.[demo]'",
            file=sys.stderr,
        )
    return lambda ep, seed, n, size: with_screens(source(ep, seed, n, size), ep, n, np.random.default_rng([seed, ep, 1]))


def make_frames(out: Path, episodes: int, frames_per_episode: int, every: int, seed: int, resolution: str) -> int:
    """Write the missing episode folders into `out`; returns how many frames were written now."""
    names = [episode_name(ep, seed) for ep in range(episodes)]
    return write_missing_episodes(out, names, frames_per_episode, seed, RESOLUTIONS[resolution], lambda: demo_source(every))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (one subfolder per episode)")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--frames-per-episode", type=int, default=200)
    parser.add_argument("--every", type=int, default=3, help=f"save a frame every N actions ({TICS_PER_ACTION} tics each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", choices=sorted(RESOLUTIONS), default="320x240")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.frames_per_episode < PAUSE_REPEATS + 3 or args.every < 1:
        parser.error(f"need --episodes >= 1, --frames-per-episode >= {PAUSE_REPEATS + 3}, --every >= 1")
    written = make_frames(args.out, args.episodes, args.frames_per_episode, args.every, args.seed, args.resolution)
    if written:
        print(f"wrote {written} frames to {args.out}")


if __name__ == "__main__":
    main()
