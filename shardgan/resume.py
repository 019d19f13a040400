"""What a checkpoint holds, which one a run resumes from, and what may change on resume.

Rank 0 alone chooses the checkpoint and every rank loads that one file, checked against
rank 0's sha256, so node-local run roots or a stale NFS cache stop the run with one line
instead of ranks silently resuming different steps. A resume from step S makes S the
run's timeline: newer checkpoints, best/ entries and metrics records are moved aside into
`checkpoints/abandoned-<time>/`, so nothing can later jump back to them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt
from . import distributed as dist
from .atomic import write_bytes_atomic
from .config import Config
from .configfile import config_from_dict
from .distributed import DistInfo
from .errors import CheckpointError, ConfigError
from .loader import ShardLoader
from .rng import capture_global_states, restore_global_states
from .rundir import RunDir, append_metrics, read_metrics, truncate_metrics
from .state import TrainState

log = logging.getLogger("shardgan")

REFUSED, ELASTIC, APPLIED, FREE = "refused", "elastic", "applied", "free"
CHANGE_POLICY: dict[str, str] = {
    # refused: the saved weights or data position mean nothing under the new value
    **dict.fromkeys(("model.width", "model.height", "model.channels", "model.nz", "model.ngf", "model.ndf"), REFUSED),
    **dict.fromkeys(("model.loss", "model.upsample", "model.spectral_norm", "model.d_batchnorm", "model.minibatch_std", "data.seed", "data.canonical_nodes", "data.split"), REFUSED),
    # elastic: continues correctly but not bit-exactly; only with checkpoint.allow_config_change
    **dict.fromkeys(("data.batch_size", "train.seed"), ELASTIC),
    # applied with a warning: the run continues from here under the new value, not bit-exactly
    **dict.fromkeys(("optim.lr_g", "optim.lr_d", "optim.beta1", "optim.beta2", "train.ema_decay"), APPLIED),
    **dict.fromkeys(("optim.r1_gamma", "optim.r2_gamma", "optim.penalty_every_steps"), APPLIED),
    **dict.fromkeys(("optim.decay_steps", "optim.lr_final", "optim.gamma_final"), APPLIED),
    **dict.fromkeys(("data.translate_px", "data.color_jitter", "data.hflip"), APPLIED),
    **dict.fromkeys(("diffaugment.policy", "diffaugment.probability", "diffaugment.translation_ratio", "diffaugment.cutout_ratio"), APPLIED),
    **dict.fromkeys(("diffaugment.ada_target", "diffaugment.ada_interval_steps", "diffaugment.ada_ramp_images"), APPLIED),
    **dict.fromkeys(("train.device", "train.precision", "train.channels_last", "train.compile", "data.decode_device"), APPLIED),
    **dict.fromkeys(("train.deterministic", "train.backend"), APPLIED),
    # free: where things are, how fast they load, when to stop, log, save or evaluate
    **dict.fromkeys(("data.shards", "data.manifest", "data.num_workers", "data.on_corrupt", "data.pin_memory", "data.prefetch_factor", "data.progress_every_s"), FREE),
    **dict.fromkeys(("data.cache_dir", "data.cache_limit", "data.prefetch_shards", "data.read_ahead", "data.fetch_attempts", "data.fetch_backoff_s", "data.fetch_timeout_s"), FREE),
    **dict.fromkeys(("train.epochs", "train.max_steps", "train.log_every_steps", "train.sample_every_steps", "train.collapse_logs", "train.collapse_evals", "train.collapse_after_steps"), FREE),
    **dict.fromkeys(("train.sample_at_epoch_end", "train.collective_timeout_s"), FREE),
    **dict.fromkeys(("checkpoint.every_steps", "checkpoint.every_minutes", "checkpoint.at_epoch_end", "checkpoint.keep_last"), FREE),
    **dict.fromkeys(("checkpoint.resume", "checkpoint.allow_config_change", "run.root", "run.name"), FREE),
    **dict.fromkeys(("eval.every_steps", "eval.num_images", "eval.swd_mode", "eval.fid_weights"), FREE),
}
"""Every config key's fate when a resumed run's value differs from its checkpoint's (docs/resume.md's table).
The data set itself (shard list and contents) is checked by the loader's fingerprint."""


# -- what a checkpoint holds ----------------------------------------------------------------


def state_dict(t: TrainState, loader: ShardLoader) -> dict[str, Any]:
    """The whole state under named keys; collective (one gather of every rank's RNG states and ADA sums)."""
    rng, augment = zip(*dist.all_gather_objects((capture_global_states(t.device), _augment_state(t))))
    return {
        ckpt.G: t.g.state_dict(),
        ckpt.D: t.d.state_dict(),
        ckpt.EMA: t.ema.compute_averaged().state_dict() if t.ema is not None else None,
        ckpt.OPT_G: t.opt_g.state_dict(),
        ckpt.OPT_D: t.opt_d.state_dict(),
        ckpt.STEP: t.step,
        ckpt.WORLD_SIZE: t.world.world_size,
        ckpt.LOADER: loader.state_dict(),
        ckpt.RNG: list(rng),
        ckpt.CONFIG: t.cfg.to_dict(),
        ckpt.FIXED_NOISE: t.fixed_noise,
        AUGMENT_STATE: list(augment),
    }


AUGMENT_STATE = "augment"
"""Key of every rank's adaptive augmentation state ({"p", "sign_sum", "count"} or None, in rank
order: the running sums are per rank); checkpoints from before ADA lack it."""


def _augment_state(t: TrainState) -> dict[str, float | int] | None:
    ada = t.diff_augment.ada if t.diff_augment is not None else None
    return ada.state_dict() if ada is not None else None


def save_checkpoint(t: TrainState, loader: ShardLoader, rd: RunDir, *, best: bool = False) -> None:
    """Rank 0 writes; all ranks learn whether it worked, so a failed write stops every rank with its line.

    `best`: into checkpoints/best/, keeping only that one (the lowest SWD so far)."""
    state = state_dict(t, loader)
    error = ""
    if t.world.is_main:
        try:
            directory, keep = (rd.best_checkpoints, 1) if best else (rd.checkpoints, t.cfg.checkpoint.keep_last)
            path = ckpt.save(directory, t.step, state, keep)
            log.info("checkpoint %s", path)
        except CheckpointError as e:
            error = str(e)
    failed = dist.first_failure(error)
    if failed:
        raise CheckpointError(failed[1])


# -- which checkpoint -------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """Rank 0's choice, broadcast to all ranks: the file and the bytes it must hold."""

    path: Path
    step: int
    sha256: str
    rollback: bool
    """Named by checkpoint.resume=PATH (and not already resumed from by an earlier run)."""


def choose_checkpoint(cfg: Config, rd: RunDir) -> tuple[Choice, dict[str, Any]] | None:
    """Rank 0: the checkpoint to resume (checkpoint.resume: auto, never or a path), loaded and checked."""
    mode = cfg.checkpoint.resume
    if mode == "never":
        if rd.checkpoints.is_dir() and ckpt.list_checkpoints(rd.checkpoints):
            raise CheckpointError(f"checkpoint.resume=never but {rd.checkpoints} holds checkpoints; choose another run.name")
        return None
    rollback = mode != "auto" and not _rollback_done(rd, Path(mode))
    if rollback:
        state, path = ckpt.load_file(Path(mode)), Path(mode)
    else:
        found = ckpt.load_newest(rd.checkpoints)
        if found is None:
            return None
        state, path = found
    return Choice(path, state[ckpt.STEP], ckpt.digest(path), rollback), state


def _rollback_done(rd: RunDir, path: Path) -> bool:
    """Was this rollback already done by an earlier run of the same command? Then that command,
    rerun after a preemption, resumes its newest checkpoint instead of rolling back again."""
    try:
        done = json.loads(rd.rollback.read_text())
        return done["path"] == str(path.resolve()) and done["sha256"] == ckpt.digest(path)
    except (OSError, ValueError, KeyError):
        return False


def abandon_after(rd: RunDir, choice: Choice) -> None:
    """Rank 0, once the resume is accepted: move checkpoints, best/ entries and metrics records
    past the resumed step into checkpoints/abandoned-<time>/ (nothing is deleted), so the resumed
    step is the run's newest; remember a rollback so the same command does not repeat it."""
    aside = rd.abandoned(time.strftime("%Y%m%d-%H%M%S"))
    moved = ckpt.move_newer_aside(rd.checkpoints, choice.step, aside)
    moved += ckpt.move_newer_aside(rd.best_checkpoints, choice.step, aside / "best")
    dropped = [r for r in read_metrics(rd.metrics) if r["step"] > choice.step]
    truncate_metrics(rd.metrics, choice.step)
    if moved:
        for record in dropped:
            append_metrics(aside / rd.metrics.name, record)
        names = ", ".join(str(p.relative_to(rd.checkpoints)) for p in moved)  # best/step_N.pt beside step_N.pt
        log.warning("resuming from step %d: moved the newer %s aside into %s", choice.step, names, aside)
    if choice.rollback:
        write_bytes_atomic(rd.rollback, json.dumps({"path": str(choice.path.resolve()), "sha256": choice.sha256}).encode())


def check_shared(rd: RunDir, world: DistInfo) -> None:
    """Collective: every rank must see the run directory rank 0 sees. On node-local run roots, a
    restart after a re-rendezvous can put rank 0 on another node, which would silently start the
    run again from nothing; so rank 0 writes a token there, every rank reads it back, and a rank
    that cannot stops them all with one line."""
    if world.world_size == 1:
        return
    token = uuid.uuid4().hex if world.is_main else ""
    path = rd.root / f".shared-check-{socket.gethostname()}-{os.getpid()}"
    if world.is_main:
        rd.root.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, token.encode())
    token, path = dist.broadcast_from_main((token, path))
    try:
        seen = "" if path.read_text() == token else "another run's token"
    except OSError as e:
        seen = e.strerror or type(e).__name__
    failed = dist.first_failure((socket.gethostname(), seen) if seen else None)
    if world.is_main:
        path.unlink(missing_ok=True)
    if failed:
        rank, (host, reason) = failed
        raise ConfigError(
            f"run directory {rd.root} is not shared: rank {rank} on {host} cannot read what rank 0 wrote there ({reason}); "
            f"run.root must be on a file system every node sees, or the first restart loses the checkpoints"
        )


def load_chosen(t: TrainState, rd: RunDir) -> tuple[Choice, dict[str, Any]] | None:
    """Collective: rank 0 chooses, every rank loads that file and checks its sha256 against rank 0's;
    a rank that cannot stops them all with one line naming it and the file."""
    chosen, error = None, ""
    if t.world.is_main:
        try:
            chosen = choose_checkpoint(t.cfg, rd)
        except CheckpointError as e:
            error = str(e)
    failed = dist.first_failure(error)
    if failed:
        raise CheckpointError(failed[1])
    choice = dist.broadcast_from_main(chosen[0] if chosen else None)
    if choice is None:
        return None
    state = chosen[1] if chosen else None
    if state is None:
        try:
            state = ckpt.load_file(choice.path)
            if ckpt.digest(choice.path) != choice.sha256:
                raise CheckpointError(f"{choice.path}: other bytes than rank 0's (a stale copy?)")
        except (CheckpointError, OSError) as e:
            error = str(e)
    failed = dist.first_failure(error)
    if failed:
        rank, reason = failed
        raise CheckpointError(f"rank {rank} cannot resume from {choice.path}, the checkpoint rank 0 chose: {reason}")
    return choice, state


# -- what may change -----------------------------------------------------------------------


def check_changes(saved: Config, cfg: Config, saved_world: int, world: int, path: Path) -> None:
    """Refuse what the policy refuses (and elastic changes unless allowed); warn about the rest."""
    old, new = _flat(saved), _flat(cfg)
    changed = {k: f"{k} ({old[k]} -> {new[k]})" for k in new if old.get(k, new[k]) != new[k] and CHANGE_POLICY.get(k, REFUSED) != FREE}
    refused = [text for k, text in changed.items() if CHANGE_POLICY.get(k, REFUSED) == REFUSED]
    if refused:
        raise CheckpointError(f"{path} was trained with other settings: {', '.join(refused)}; set them back, or start a new run with run.name=NEW")
    elastic = [text for k, text in changed.items() if CHANGE_POLICY[k] == ELASTIC]
    elastic += [f"world size ({saved_world} -> {world})"] if saved_world != world else []
    if elastic and not cfg.checkpoint.allow_config_change:
        raise CheckpointError(f"resuming {path} with changed {', '.join(elastic)} breaks exact resume; pass --allow-config-change to continue anyway")
    applied = elastic + [text for k, text in changed.items() if CHANGE_POLICY[k] == APPLIED]
    if applied:
        log.warning("resuming %s with changed %s: applied from step on; the run is not bit-exact from here", path, ", ".join(applied))


def _flat(cfg: Config) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, table in cfg.to_dict().items() for key, value in table.items()}


def restore(t: TrainState, loader: ShardLoader, state: dict[str, Any], path: Path) -> None:
    """Load everything, then apply the configured optimizer settings (a changed one was warned about)."""
    check_changes(config_from_dict(state[ckpt.CONFIG], str(path)), t.cfg, state[ckpt.WORLD_SIZE], t.world.world_size, path)
    t.g.load_state_dict(state[ckpt.G])
    t.d.load_state_dict(state[ckpt.D])
    if t.ema is not None:
        t.ema.load_state_dict(state[ckpt.EMA] if state[ckpt.EMA] is not None else state[ckpt.G])
    optim = t.cfg.optim
    for opt, lr, saved in ((t.opt_g, optim.lr_g, state[ckpt.OPT_G]), (t.opt_d, optim.lr_d, state[ckpt.OPT_D])):
        opt.load_state_dict(saved)
        for group in opt.param_groups:
            group["lr"], group["betas"] = lr, (optim.beta1, optim.beta2)
    t.fixed_noise = state[ckpt.FIXED_NOISE]
    ada = t.diff_augment.ada if t.diff_augment is not None else None
    saved = [s for s in state.get(AUGMENT_STATE) or [] if s is not None]
    if ada is not None and saved:  # else (ADA newly on): p starts at diffaugment.probability
        same_world = len(saved) == t.world.world_size
        ada.load_state_dict(saved[t.world.rank] if same_world else {**saved[0], "sign_sum": 0.0, "count": 0})
    t.step = state[ckpt.STEP]
    loader.load_state_dict(state[ckpt.LOADER])
    if len(state[ckpt.RNG]) == t.world.world_size:
        restore_global_states(state[ckpt.RNG][t.world.rank], t.device)
    log.info("resumed from %s at step %d (epoch %d)", path, t.step, loader.epoch)
