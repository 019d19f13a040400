"""The duties of a step boundary: the first batch's grid, count the images, agree on
stop/finite/time, log, samples, evaluation, and one save path (`maybe_checkpoint`) for steps,
minutes, epoch ends, signals and the last step.

Every decision that makes ranks take a branch (stop, non-finite loss, time to save) is
agreed by all-reduce first, so all ranks save and stop at the same step. At an ordinary step
that agreement is read one step late (distributed.LateAgreement), the only read from the device
an ordinary step makes; so a stop or a minutes timer takes effect at the step after it is seen.
Rank 0's metric records are kept in memory (read once, at the start), never reread per plot.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchinfo import summary
from tqdm import tqdm

from . import distributed as dist
from .atomic import write_bytes_atomic
from .configfile import to_toml
from .errors import ConfigError, NonFiniteLossError, ShardganError
from .evaluate import Evaluator
from .generate import best_checkpoint
from .loader import ShardLoader
from .pixels import to_unit
from .resume import save_checkpoint
from .rundir import RunDir, append_metrics, read_metrics
from .source import split_location
from .stop import StopFlag
from .state import TrainState, total_steps
from .viz import save_curve, save_grid, save_loss_curve

log = logging.getLogger("shardgan")


@dataclass
class Meter:
    """Images/s between log lines. The clock is looked up when read, not bound at import, so a
    faked `time` times the first interval too."""

    images: int = 0
    since: float = field(default_factory=lambda: time.perf_counter())

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.images / max(now - self.since, 1e-9)
        self.images, self.since = 0, now
        return rate


CHECKED = ("loss_d", "loss_g", "r1", "r2")
"""The step's losses that must be finite: the adversarial ones and the penalties (when computed)."""


def not_finite(stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """On the device, without a read: whether any CHECKED loss of the step is NaN or infinite."""
    return ~torch.stack([torch.isfinite(stats[k]) for k in CHECKED if k in stats]).all()


D_WINS_REAL, D_WINS_FAKE = 0.95, 0.05
"""D 'wins' a log line when its mean sigmoid output is above 0.95 on reals and below 0.05 on fakes."""
MIN_DIVERSITY = 0.4
"""Below this, the fixed-noise samples of an evaluation are on average less than 40 % as far apart
as the val images (on small downsampled images: fidelity.mean_pairwise_distance). A healthy
run's stays near 1; one image plus speckle scores near 0."""


@dataclass
class CollapseWatchdog:
    """The original project's failure, said out loud: D wins (d_real near 1, d_fake near 0) for
    `logs_in_a_row` log lines in a row, or the samples' diversity stays below MIN_DIVERSITY for
    `evals_in_a_row` evaluations in a row (mode collapse), counted from step `after_step` on.
    Fed every metrics record (log lines and evaluations); its streaks are recomputed from
    metrics.jsonl on resume, so a resumed run flags the same steps."""

    logs_in_a_row: int
    evals_in_a_row: int
    after_step: int = 0
    d_wins: int = 0
    low_diversity: int = 0
    started: list[str] = field(default_factory=list)
    """The streaks the last record brought to their threshold (warned about once)."""

    def check(self, record: dict) -> str | None:
        """Count one record; the collapse it is in ("d_wins", "low_diversity", both joined by "+"),
        or None. A streak counts from its threshold on; a threshold of 0 disables it."""
        before = self._found()
        if "swd" in record:  # an evaluation
            if "diversity" in record and record["step"] >= self.after_step:
                self.low_diversity = self.low_diversity + 1 if record["diversity"] < MIN_DIVERSITY else 0
        elif "d_real" in record:  # a log line
            self.d_wins = self.d_wins + 1 if record["d_real"] > D_WINS_REAL and record["d_fake"] < D_WINS_FAKE else 0
        found = self._found()
        self.started = [name for name in found if name not in before]
        return "+".join(found) or None

    def _found(self) -> list[str]:
        streaks = (("d_wins", self.d_wins, self.logs_in_a_row), ("low_diversity", self.low_diversity, self.evals_in_a_row))
        return [name for name, streak, needed in streaks if needed and streak >= needed]

    def message(self, name: str, step: int, record: dict, best: str) -> str:
        """The warning for a streak that just started; `best`: the best checkpoint, described."""
        if name == "d_wins":
            return (
                f"collapse watchdog at step {step}: D has won (D(x) > {D_WINS_REAL}, D(G(z)) < {D_WINS_FAKE}) for {self.logs_in_a_row} "
                "log lines in a row, so G learns little; try model.loss=rpgan with optim.r1_gamma and r2_gamma (docs/losses.md), "
                "diffaugment.policy or a lower optim.lr_d"
            )
        return (
            f"collapse watchdog at step {step}: mode collapse: the samples are {record['diversity']:.2f} as far apart as the real "
            f"images (below {MIN_DIVERSITY}) for {self.evals_in_a_row} evaluations in a row; best checkpoint: {best}"
        )


def prepare_run_dir(t: TrainState, rd: RunDir) -> None:
    """Rank 0: the run directory, its resolved config and the architecture summary."""
    rd.create()
    write_bytes_atomic(rd.config, to_toml(t.cfg).encode())
    if not rd.architecture.exists():
        cfg = t.cfg.model
        g_sum = summary(copy.deepcopy(t.g), input_size=(2, cfg.nz, 1, 1), device=t.device, verbose=0, depth=2)
        d_sum = summary(copy.deepcopy(t.d), input_size=(2, cfg.channels, cfg.height, cfg.width), device=t.device, verbose=0, depth=2)
        write_bytes_atomic(rd.architecture, f"Generator\n{g_sum}\n\nDiscriminator\n{d_sum}\n".encode())


def save_samples(t: TrainState, path: Path) -> torch.Tensor:
    """Grid from the fixed noise through the EMA generator (or G), in eval mode: no state changes.
    Returns the images, (N, C, H, W) in [-1, 1]."""
    model = t.sampler()
    was_training = model.training
    model.eval()
    with torch.no_grad(), t.autocast():
        images = model(t.fixed_noise.to(t.device)).float()
    model.train(was_training)
    save_grid(images, path, nrow=8)
    return images


class TensorBoard:
    """Rank 0's event files in runs/<name>/tensorboard (what StyleGAN2-ADA and torchtitan users open
    first). A resumed run purges the events past its step, so curves show one history."""

    def __init__(self, rd: RunDir, step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed (pip install 'shardgan[tensorboard]'): no event files")
            self.writer = None
            return
        self.writer = SummaryWriter(str(rd.tensorboard), purge_step=step + 1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def images(self, step: int, images: torch.Tensor) -> None:
        if self.writer is not None:
            self.writer.add_images("samples", to_unit(images.cpu()), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def heartbeat_s(t: TrainState) -> float:
    """How often the ranks meet while rank 0 alone works (distributed.run_on_main)."""
    return min(10.0, t.cfg.train.collective_timeout_s / dist.HEARTBEATS_PER_TIMEOUT)


def has_val(loader: ShardLoader) -> bool:
    val = loader.manifest.splits.get("val")
    return bool(val and val.shards)


def build_evaluator(t: TrainState, loader: ShardLoader) -> Evaluator | None:
    """Rank 0's SWD reference on the val split (None elsewhere, or without a val split); a failure
    to build it (e.g. a missing eval.fid_weights file) stops every rank. The others wait for it
    in heartbeats, however long it takes."""
    if not has_val(loader):
        if t.world.is_main:
            log.warning("no val split (%s): SWD evaluation, the best checkpoint and the samples' diversity check are skipped (pack with --val to get one)", split_location(t.cfg.data, "val"))
        return None

    def build() -> tuple[Evaluator | None, str]:
        try:
            return Evaluator.build(t.cfg, t.device), ""
        except ShardganError as e:
            return None, str(e)

    evaluator, error = dist.run_on_main(build, heartbeat_s(t)) or (None, "")
    failed = dist.first_failure(error)
    if failed:
        raise ConfigError(failed[1])
    return evaluator


class Hooks:
    """Per-step duties of one run, and the bookkeeping they share (last save, meter, evaluator)."""

    def __init__(self, t: TrainState, loader: ShardLoader, rd: RunDir, stop: StopFlag, bar: tqdm):
        self.t, self.loader, self.rd, self.stop, self.bar = t, loader, rd, stop, bar
        self.total = total_steps(t.cfg, loader)
        self.meter = Meter()
        self.global_batch = t.cfg.data.batch_size * t.world.world_size
        self.first_batch_wanted = t.world.is_main and not rd.train_batch.exists()
        """Rank 0 of a run without its first batch's grid yet (checked once, not per step)."""
        self.saved_step = t.step
        """The newest step on disk (a resumed one is not written again)."""
        self.saved_at = time.monotonic()
        self.corrupt_reported = len(loader.corrupt)
        """This rank's skipped samples already counted in an epoch-end line."""
        self.evaluator = build_evaluator(t, loader)
        self.tensorboard = TensorBoard(rd, t.step) if t.world.is_main else None
        self.agreement = dist.LateAgreement(t.device)
        self.stopping = False
        """A stop all ranks agreed on, seen by after_step or by a save's fresh read."""
        self.watchdog = CollapseWatchdog(t.cfg.train.collapse_logs, t.cfg.train.collapse_evals, t.cfg.train.collapse_after_steps)
        self.records = read_metrics(rd.metrics) if t.world.is_main else []
        """Rank 0: metrics.jsonl as written, read once here and appended to, for the curves."""
        for record in self.records:  # the streaks of the history this run continues (metrics.jsonl ends at the resumed step)
                self.watchdog.check(record)

    def before_step(self, images: torch.Tensor) -> None:
        """Rank 0: the run's first batch as a grid (train_batch.png), once, as loaded (before any augmentation)."""
        if self.first_batch_wanted:
            save_grid(images[:64], self.rd.train_batch)
            self.first_batch_wanted = False

    def after_step(self, stats: dict[str, torch.Tensor], epoch: int) -> bool:
        """Count the step's images (all ranks'), agree on stop/finite/time (one all-reduce, read a
        step late), log, samples, eval, checkpoint. True: stop now. The minutes timer is rank 0's
        clock alone."""
        t, cfg = self.t, self.t.cfg
        every_s = 60 * cfg.checkpoint.every_minutes
        time_due = t.world.is_main and every_s > 0 and time.monotonic() - self.saved_at >= every_s
        self.meter.images += self.global_batch
        time_due = self.take(self.agreement.push(t.step, not_finite(stats), [self.stop.signum is not None, time_due]))
        if t.world.is_main and t.step % cfg.train.log_every_steps == 0:
            self.log_metrics(stats, epoch)
        sample_every = cfg.train.sample_every_steps  # and the last step, whatever its number: the run's final samples
        if t.world.is_main and sample_every and (t.step % sample_every == 0 or t.step == self.total):
            self.tensorboard.images(t.step, save_samples(t, self.rd.sample(t.step)))
        if t.step == self.total or (cfg.eval.every_steps and t.step % cfg.eval.every_steps == 0):
            self.evaluate()
        every = cfg.checkpoint.every_steps
        self.maybe_checkpoint(self.stopping or time_due or t.step == self.total or (every > 0 and t.step % every == 0))
        return self.stopping

    def take(self, agreed: tuple[int, list[bool]] | None) -> bool:
        """Act on one step's agreed [not finite, stop, time due]: raise, note the stop; returns time due."""
        if agreed is None:
            return False
        step, (not_finite, stopped, time_due) = agreed
        if not_finite:
            self.raise_non_finite(step)
        self.stopping |= stopped
        return time_due

    def end_of_epoch(self, epoch: int) -> None:
        """Where configured: samples (the original project's fake_epoch_N.png) and a checkpoint.
        Nothing else happens at an epoch end, so a large collection's frequent ones cost nothing."""
        log.info("epoch %d done at step %d%s", epoch, self.t.step, self._skipped_this_epoch())
        if self.t.world.is_main and self.t.cfg.train.sample_at_epoch_end:
            self.tensorboard.images(self.t.step, save_samples(self.t, self.rd.sample(self.t.step)))
            save_loss_curve(self.records, self.rd.loss_curve)
        self.maybe_checkpoint(self.t.cfg.checkpoint.at_epoch_end)

    def _skipped_this_epoch(self) -> str:
        """All ranks' corrupt samples skipped since the last epoch end (collective), for its line."""
        new = len(self.loader.corrupt) - self.corrupt_reported
        self.corrupt_reported = len(self.loader.corrupt)
        skipped = int(dist.sum_over_ranks(torch.tensor(float(new), device=self.t.device)).item())  # once an epoch
        return f", {skipped} corrupt samples skipped (data.on_corrupt=skip; each was named above)" if skipped else ""

    def maybe_checkpoint(self, due: bool, *, best: bool = False) -> None:
        """The one save path (collective): never a step twice, never weights a non-finite step
        made (the newest step's flags are read now), and the minutes timer restarts at any save."""
        if not due or (self.t.step == self.saved_step and not best):
            return
        self.take(self.agreement.now())
        save_checkpoint(self.t, self.loader, self.rd, best=best)
        self.saved_at = time.monotonic()
        if not best:
            self.saved_step = self.t.step

    def evaluate(self) -> None:
        """SWD of the sampler on rank 0, on its training device, while the others wait in
        heartbeats (no collective timeout, however long it takes): logged to metrics.jsonl and
        plotted; a new lowest SWD also saves a full checkpoint into checkpoints/best/."""
        t, rd = self.t, self.rd
        best, record = False, {}
        if has_val(self.loader):  # on every rank alike: all take part in run_on_main
            scores = dist.run_on_main(lambda: self.evaluator(t.sampler()) if self.evaluator is not None else None, heartbeat_s(t))
        if self.evaluator is not None:
            earlier = [r["swd"] for r in self.records if "swd" in r and r["step"] < t.step]
            best = not earlier or scores["swd"] < min(earlier)
            record = {"step": t.step, **scores}
            collapse = self.watchdog.check(record)
            if collapse is not None:
                record["collapse"] = collapse
            self.append(record)
            self.tensorboard.scalars(t.step, {f"eval/{k}": v for k, v in scores.items() if isinstance(v, (int, float))})
            save_curve(self.records, ("swd",), rd.swd_curve, "SWD x 1e3 (lower is better)")
            log.info("step %d: swd %.2f, diversity %.2f%s", t.step, scores["swd"], scores["diversity"], " (lowest so far)" if best else "")
        self.maybe_checkpoint(dist.broadcast_from_main(best), best=True)
        if "low_diversity" in self.watchdog.started and record:  # after the save: best/ is up to date
            log.warning(self.watchdog.message("low_diversity", t.step, record, str(best_checkpoint(rd) or "none yet")))

    def append(self, record: dict) -> None:
        """Rank 0: one record into metrics.jsonl and into the records in memory."""
        append_metrics(self.rd.metrics, record)
        self.records.append(record)

    def log_metrics(self, stats: dict[str, torch.Tensor], epoch: int) -> None:
        t = self.t
        values = torch.stack([v.detach().float().reshape(()).to(t.device) for v in stats.values()]).tolist()  # one read of the device
        record = {"step": t.step, "epoch": epoch, **{k: round(v, 6) for k, v in zip(stats, values)}}
        record["images_per_s"] = round(self.meter.rate(), 1)
        record["lr"] = t.opt_g.param_groups[0]["lr"]
        collapse = self.watchdog.check(record)
        if collapse is not None:
            record["collapse"] = collapse
            for name in self.watchdog.started:
                log.warning(self.watchdog.message(name, t.step, record, ""))
        self.append(record)
        self.tensorboard.scalars(t.step, {f"train/{k}": v for k, v in record.items() if k not in ("step", "epoch") and isinstance(v, (int, float))})
        self.bar.set_postfix(loss_d=f"{record['loss_d']:.3f}", loss_g=f"{record['loss_g']:.3f}")
        log.info(
            "step %d/%d (epoch %d): loss_d %.4f loss_g %.4f D(x) %.3f D(G(z)) %.3f, %.0f img/s",
            t.step, self.total, epoch, record["loss_d"], record["loss_g"], record["d_real"], record["d_fake"], record["images_per_s"],
        )  # fmt: skip

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    def raise_non_finite(self, bad_step: int | None) -> None:
        where = f"at step {bad_step}" if bad_step is not None else f"on another rank by step {self.t.step}"
        raise NonFiniteLossError(f"non-finite loss {where}; the run stops and the last good checkpoint in {self.rd.checkpoints} is kept")
