"""Checkpoints: the whole training state under named keys, complete or absent, loaded safely.

A checkpoint is `step_XXXXXXXX.pt` (torch.save of tensors and plain containers, so
`torch.load(weights_only=True)` can read it and refuses anything that would run code) plus
`step_XXXXXXXX.json` (size + sha256), written after the .pt. Like torchtitan's metadata
file, the .json is what makes a checkpoint count: a kill during the write leaves a .pt
without one, or a temp file, and neither is ever loaded. On load, a newest checkpoint that
fails its checksum or the safe unpickler is reported by name and the previous one is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import torch

from .atomic import remove_stale_temps, write_bytes_atomic
from .errors import CheckpointError

log = logging.getLogger("shardgan")

FORMAT = "shardgan-checkpoint"
VERSION = 1

# Named keys of the state dict (torchtitan-style constants, so readers and writers agree).
G, D, EMA = "G", "D", "EMA"
OPT_G, OPT_D = "opt_G", "opt_D"
STEP, WORLD_SIZE = "step", "world_size"
LOADER, RNG, CONFIG, FIXED_NOISE = "loader", "rng", "config", "fixed_noise"
REQUIRED = (G, D, OPT_G, OPT_D, STEP, WORLD_SIZE, LOADER, RNG, CONFIG, FIXED_NOISE)

PREFIX = "step_"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}.pt"


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _step_of(path: Path) -> int:
    return int(path.stem[len(PREFIX) :])


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files (with or without metadata), newest first."""
    paths = [p for p in directory.glob(f"{PREFIX}*.pt") if p.stem[len(PREFIX) :].isdigit()]
    return sorted(paths, key=_step_of, reverse=True)


def save(directory: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write the checkpoint for `step` (tmp + fsync + rename, then its metadata), keep the newest
    `keep_last`. On an OSError (disk full, read-only) nothing new counts and older ones stay."""
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(directory)
    path = directory / checkpoint_name(step)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    data = buffer.getvalue()
    meta = {"format": FORMAT, "version": VERSION, "step": step, "num_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    try:
        write_bytes_atomic(path, data)
        write_bytes_atomic(_meta_path(path), json.dumps(meta).encode())
    except OSError as e:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        previous = next((p.name for p in list_checkpoints(directory) if p != path), "none")
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e} (previous checkpoint kept: {previous})") from e
    prune(directory, keep_last, path)
    return path


def is_complete(path: Path) -> bool:
    """A .pt whose .json was written: the write finished (whether the bytes still match is load's to say)."""
    return _meta_path(path).exists()


def newest_complete(directory: Path) -> tuple[int, Path] | None:
    """The step and path of the newest complete checkpoint in `directory` (not loaded or checked)."""
    complete = [p for p in list_checkpoints(directory) if is_complete(p)] if directory.is_dir() else []
    return (_step_of(complete[0]), complete[0]) if complete else None


def prune(directory: Path, keep_last: int, written: Path) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, and every orphan .pt (a kill
    between the .pt and its .json: it can never load). Only complete ones count, and neither the
    newest complete one nor `written` is ever deleted. Returns what was deleted."""
    paths = list_checkpoints(directory)
    complete = [p for p in paths if is_complete(p)]
    keep = {written, *complete[: max(keep_last, 1)]}
    doomed = [p for p in paths if p not in keep]
    for old in doomed:
        _meta_path(old).unlink(missing_ok=True)  # metadata first: a half-deleted checkpoint never counts
        old.unlink(missing_ok=True)
    return doomed


def move_newer_aside(directory: Path, step: int, destination: Path) -> list[Path]:
    """Move every checkpoint (and its .json) past `step` into `destination`: a resume from `step`
    abandons them, and nothing may later prefer them over the resumed timeline."""
    newer = [p for p in list_checkpoints(directory) if _step_of(p) > step] if directory.is_dir() else []
    for path in newer:
        destination.mkdir(parents=True, exist_ok=True)
        for f in (_meta_path(path), path):  # metadata first, as in prune
            if f.exists():
                f.rename(destination / f.name)
    return newer


def _is_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive: garbage is told apart from a checkpoint that lost its .json."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def load_file(path: Path) -> dict[str, Any]:
    """Load one checkpoint after checking its metadata, size and sha256; CheckpointError says why not."""
    meta_path = _meta_path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        meta = json.loads(meta_path.read_text())
        data = path.read_bytes()
    except FileNotFoundError as e:
        if not _is_torch_file(path):
            raise CheckpointError(f"{path}: not a shardgan checkpoint (not a torch.save file, and no {meta_path.name} beside it)") from None
        raise CheckpointError(f"{path}: incomplete (missing {Path(e.filename).name})") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable metadata or data: {e}") from None
    if len(data) != meta.get("num_bytes") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"{path}: corrupt (size or sha256 differs from {meta_path.name})")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "refuse this file"
        raise CheckpointError(f"{path}: refused by the safe loader: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION:
        raise CheckpointError(f"{path}: not a {FORMAT} v{VERSION} file")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: missing keys {missing}")
    if (meta.get("format"), meta.get("version"), meta.get("step")) != (FORMAT, VERSION, state[STEP]):
        raise CheckpointError(f"{path}: {meta_path.name} describes another checkpoint (step {meta.get('step')}, this one holds step {state[STEP]})")
    return state


def digest(path: Path) -> str:
    """The sha256 recorded for a checkpoint: equal digests, equal bytes (ranks compare them)."""
    return json.loads(_meta_path(path).read_text())["sha256"]


def load_newest(directory: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads, warning by name about each newer one that does not.

    None when the directory holds no checkpoint at all; CheckpointError when it holds only bad ones
    (starting over would silently throw the run away)."""
    paths = list_checkpoints(directory) if directory.is_dir() else []
    reasons = []
    for path in paths:
        try:
            return load_file(path), path
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s; trying the previous one", path, e)
            reasons.append(str(e))
    if paths:
        raise CheckpointError(f"no usable checkpoint in {directory}: " + "; ".join(reasons))
    return None


def load_given_or_newest(directory: Path, path: Path | None = None) -> tuple[dict[str, Any], Path]:
    """`path` if given, else the newest loadable checkpoint in `directory` (generate, eval)."""
    if path is not None:
        return load_file(path), path
    found = load_newest(directory)
    if found is None:
        raise CheckpointError(f"no checkpoint in {directory}")
    return found

