"""Shared test data: packed datasets, frame folders, videos and damaged files, generated from
shardgan.synthetic's frames."""

from __future__ import annotations

import hashlib
import multiprocessing
import signal
import socket
import struct
import sys
import tarfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from shardgan.manifest import Manifest, ShardInfo, SplitInfo, load_manifest
from shardgan.shards import Sample, encode_image, sample_key, write_shard
from shardgan.synthetic import game_frame, write_frames

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
pytest_plugins = ["tests.trainer_runs"]  # trainer session fixtures, computed once for all test files


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background by a non-interactive shell (`make test &`, nohup)
    inherits SIGINT ignored, and so would every process the Ctrl-C tests start, which then shrug
    off the terminal's Ctrl-C those tests emulate: the tests' processes get the default back."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need CUDA: without it they are skipped (and say so), not failed."""
    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


def build_dataset(
    directory: Path,
    shard_sizes: list[int],
    width: int = 16,
    height: int = 12,
    channels: int = 3,
    image_format: str = "png",
    val_sizes: tuple[int, ...] = (),
) -> Manifest:
    """Write shards + manifest directly (no pack) so loader/trainer tests stand on their own.

    Sample pixels encode their global index, so tests can check which sample came out.
    """
    directory.mkdir(parents=True, exist_ok=True)
    splits: dict[str, SplitInfo] = {}
    index = 0
    for split, sizes in (("train", shard_sizes), ("val", list(val_sizes))):
        infos = []
        for shard_no, size in enumerate(sizes):
            samples = []
            for _ in range(size):
                pixels = game_frame(index, width, height)[:, :, :channels]
                samples.append(Sample(sample_key(index), encode_image(pixels, image_format), {"src": f"frame_{index}.png"}))
                index += 1
            infos.append(write_shard(directory / f"{split}-{shard_no:06d}.tar", samples, image_format))
        splits[split] = SplitInfo(infos)
    manifest = Manifest(width, height, channels, image_format, splits, num_inputs=index, root=directory)
    manifest.write(directory)
    return manifest


def write_dataset(directory: Path, image_format: str, channels: int = 3, quality: int = 95, sizes=(9, 14), uneven: bool = False) -> Manifest:
    """Shards written with pack's writer at a chosen quality, sample pixels from their index;
    `uneven`: metadata of 0, 1 or 2 extra tar blocks, so samples are not one stride apart."""
    directory.mkdir(parents=True, exist_ok=True)
    infos, index = [], 0
    for n, size in enumerate(sizes):
        samples = []
        for _ in range(size):
            pixels = game_frame(index, 20, 14)[:, :, :channels]
            samples.append(Sample(sample_key(index), encode_image(pixels, image_format, quality), {"src": "x" * (index % 3 * 400) if uneven else f"f{index}" * (index % 5)}))
            index += 1
        infos.append(write_shard(directory / f"train-{n:06d}.tar", samples, image_format))
    manifest = Manifest(20, 14, channels, image_format, {"train": SplitInfo(infos)}, root=directory)
    manifest.write(directory)
    return load_manifest(directory)


def all_positions(manifest: Manifest, seed: int = 0) -> np.ndarray:
    """Every sample as [shard, index], shards in turn, shuffled within each (as the epoch order does)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.stack([np.full(s.num_samples, k), rng.permutation(s.num_samples)], 1) for k, s in enumerate(manifest.split("train").shards)])


def write_tiny_shards(directory: Path, count: int) -> None:
    """`count` one-sample shards of a 4x4 gray raw image, written directly (build_dataset takes ~5 ms a shard)."""
    directory.mkdir(parents=True, exist_ok=True)
    infos = []
    for i in range(count):
        key, data = sample_key(i), encode_image(np.full((4, 4, 1), i % 251, np.uint8), "raw")
        member = tarfile.TarInfo(f"{key}.npy")
        member.size = len(data)
        blob = member.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)
        shard = blob + b"\0" * 1024  # end-of-archive blocks
        name = f"train-{i:06d}.tar"
        (directory / name).write_bytes(shard)
        infos.append(ShardInfo(name, 1, len(shard), hashlib.sha256(shard).hexdigest(), [0, len(blob)]))
    Manifest(4, 4, 1, "raw", {"train": SplitInfo(infos)}, root=directory).write(directory)


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (valid CRCs, almost no data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def write_video(path: Path, num_frames: int, width: int = 64, height: int = 48) -> None:
    """An mpeg4 video of game frames; the test is skipped where PyAV (the `video` extra) is missing."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(game_frame(i, width, height), format="rgb24")))
        container.mux(stream.encode())


def corrupt_images(shard: Path, keys: list[str]) -> None:
    """Overwrite the middle of each key's image data with junk, keeping the file size."""
    with tarfile.open(shard) as tar:
        spans = [(m.offset_data, m.size) for m in tar if m.name.split(".")[0] in keys and not m.name.endswith(".json")]
    assert len(spans) == len(keys)
    with open(shard, "r+b") as f:
        for offset, size in spans:
            f.seek(offset + size // 4)
            f.write(b"\xde\xad\xbe\xef" * (size // 8))


@pytest.fixture
def frames_dir(tmp_path: Path) -> Path:
    write_frames(tmp_path / "frames", 40)
    return tmp_path / "frames"


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def survivors(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    """Those of `pids` still running after waiting up to `timeout_s` for all to end."""
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawned_ranks(target: Callable[..., None], *args: object, world_size: int = 2, timeout: float = 180) -> tuple[list, list[int | None]]:
    """`target(rank, port, results, *args)` in `world_size` spawned processes that form a gloo group
    on 127.0.0.1, each putting one result that begins with its rank: the results in rank order,
    and the processes' exit codes."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    ranks = [ctx.Process(target=target, args=(r, port, results, *args)) for r in range(world_size)]
    for process in ranks:
        process.start()
    got = sorted((results.get(timeout=timeout) for _ in ranks), key=lambda r: r[0])
    for process in ranks:
        process.join(60)
    return got, [process.exitcode for process in ranks]

