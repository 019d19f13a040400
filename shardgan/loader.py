"""The streaming loader: equal batches per rank, exact resume, corrupt samples skipped in step.

Every DataLoader worker follows `plan.RankPlan`: it computes the epoch's global order,
takes its batches (w, w+K, ... counted from the resume point), reads exactly those
samples (one pread each, from the manifest's offsets; skipped samples are never read)
and yields whole uint8 batches. The main process only counts batches handed out, so
the position is one number, `samples_seen`, checkpointed in `state_dict()`.

Remote shards (http(s), s3, `pipe:` URLs) are fetched whole into the node-local cache
(cache.py), verified against the manifest's sha256, and read from there with the same
preads, so resuming deep into an epoch costs the same for them as for local shards.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .cache import Prefetcher, ShardCache, default_cache_dir
from .config import DataConfig
from .errors import CorruptSampleError, DataError
from .manifest import MANIFEST_NAME, Manifest, ShardInfo, SplitInfo, check_shards_present, load_manifest, parse_manifest
from .plan import RankPlan, epoch_order
from .shards import TAR_BLOCK, decode_sample, parse_header, read_sample
from .sources import FetchPolicy, fetch_bytes, sibling, url_name
from .stop import blocked, ignore_in_worker

log = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_OPEN_FILES = 8
"""Open shard files per reader: the epoch order walks shards one after another, so a few suffice."""
URL_SCHEMES = ("pipe:", "http://", "https://", "s3://", "gs://", "file:")
"""gs:// is refused by sources.py with a hint (pipe:gsutil cat URL)."""


@dataclass(frozen=True)
class CorruptReport:
    """A sample that was skipped: where it lives and why."""

    shard: str
    key: str
    reason: str


# -- where the shards are ---------------------------------------------------------------


@dataclass(frozen=True)
class ShardSource:
    """The split's shards: the manifest, and URLs when they are remote."""

    manifest: Manifest
    split: str
    urls: tuple[str, ...] | None
    """None: local files, read by pread at the manifest's offsets; else one URL per shard,
    fetched into the node-local cache and read from there the same way."""

    @property
    def shards(self) -> list[ShardInfo]:
        return self.manifest.split(self.split).shards

    @property
    def num_samples(self) -> int:
        return self.manifest.split(self.split).num_samples

    @property
    def fingerprint(self) -> str:
        """Changes when the shard list or any shard's content changes."""
        items = [(s.name, s.num_samples, s.sha256) for s in self.shards]
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def is_url_pattern(shards: str) -> bool:
    return shards.startswith(URL_SCHEMES) or "{" in shards or "::" in shards or shards.endswith(".tar")


def is_remote(location: str) -> bool:
    return location.startswith(URL_SCHEMES)


def resolve_source(cfg: DataConfig, split: str) -> ShardSource:
    """Load the manifest and check (stat only) that local shards are all there, at start-up.

    A pattern selects shards of `cfg.split`; any other split (val) is taken whole, from beside
    the pattern's first shard.
    """
    if not is_url_pattern(cfg.shards):
        manifest = load_manifest(cfg.manifest or cfg.shards)
        manifest.split(split)
        check_shards_present(manifest, split)
        return ShardSource(manifest, split, None)
    urls = wds.shardlists.expand_urls(cfg.shards)
    remote = [is_remote(u) for u in urls]
    if any(remote) and not all(remote):
        raise DataError(f"data.shards {cfg.shards!r} mixes local paths and URLs")
    manifest = _load_manifest(cfg.manifest or sibling(urls[0], MANIFEST_NAME), cfg)
    if split == cfg.split:
        selected = _select_shards(manifest, split, [url_name(u) for u in urls])
        manifest = replace(manifest, splits={**manifest.splits, split: SplitInfo(selected)})
    else:
        urls = [sibling(urls[0], s.name) for s in manifest.split(split).shards]
    if remote[0]:
        return ShardSource(manifest, split, tuple(urls))
    if len({Path(u).parent for u in urls}) != 1:
        raise DataError(f"data.shards {cfg.shards!r}: local shards must share one directory")
    manifest = replace(manifest, root=Path(urls[0]).parent)
    check_shards_present(manifest, split)
    return ShardSource(manifest, split, None)


def _load_manifest(location: str, cfg: DataConfig) -> Manifest:
    if is_remote(location):
        return parse_manifest(fetch_bytes(location, fetch_policy(cfg)), location)
    return load_manifest(location)


def _select_shards(manifest: Manifest, split: str, names: list[str]) -> list[ShardInfo]:
    by_name = {s.name: s for s in manifest.split(split).shards}
    for name in names:
        if name not in by_name:
            raise DataError(f"shard {name} is not in split {split!r} of {manifest.origin}")
    if len(set(names)) != len(names):
        raise DataError(f"data.shards names a shard twice: {sorted(n for n in names if names.count(n) > 1)[0]}")
    return [by_name[n] for n in names]


def fetch_policy(cfg: DataConfig) -> FetchPolicy:
    return FetchPolicy(cfg.fetch_attempts, cfg.fetch_backoff_s, cfg.fetch_timeout_s)


def build_cache(cfg: DataConfig) -> ShardCache:
    return ShardCache(cfg.cache_dir or default_cache_dir(), cfg.cache_limit_bytes, fetch_policy(cfg))


# -- reading one sample -----------------------------------------------------------------


class ShardReader:
    """Random access to shards: one pread per sample, from local files or cached copies.

    At most `max_open_files` shards stay open (least recently used closed first): a worker
    touches every shard of its plan slice, and a long epoch must not run into `ulimit -n`.
    """

    def __init__(self, source: ShardSource, cache: ShardCache | None = None, max_open_files: int = MAX_OPEN_FILES):
        assert (cache is None) == (source.urls is None), "remote shards are read through a cache"
        self.source = source
        self.cache = cache
        self.max_open_files = max_open_files
        self._files: OrderedDict[int, BinaryIO] = OrderedDict()

    def _file(self, shard: int) -> BinaryIO:
        if shard in self._files:
            self._files.move_to_end(shard)
            return self._files[shard]
        if len(self._files) >= self.max_open_files:
            self._files.popitem(last=False)[1].close()
        self._files[shard] = self._open(shard)
        return self._files[shard]

    def _open(self, shard: int) -> BinaryIO:
        info = self.source.shards[shard]
        if self.cache is not None:
            return self.cache.open(self.source.urls[shard], info)
        path = self.source.manifest.shard_path(info)
        try:
            return open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise DataError(f"shard missing: {path} (it was there at start-up)") from None
        except OSError as e:
            raise DataError(f"cannot open shard {path}: {e.strerror}") from None

    def read(self, shard: int, index: int) -> dict[str, bytes]:
        info = self.source.shards[shard]
        f = self._file(shard)
        start, end = info.offsets[index], info.offsets[index + 1]
        try:
            return read_sample(f, start, end)
        except ValueError as e:
            raise CorruptSampleError(info.name, _key_at(f, start, index), str(e)) from None

    def image(self, shard: int, index: int) -> tuple[str, np.ndarray]:
        """The sample's key and its decoded image, (H, W, C) uint8; CorruptSampleError says why not."""
        sample = self.read(shard, index)
        m = self.source.manifest
        try:
            return sample["__key__"], decode_sample(sample, m.image_format, m.height, m.width, m.channels)
        except ValueError as e:
            raise CorruptSampleError(self.source.shards[shard].name, sample["__key__"], str(e)) from None

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def _key_at(f: BinaryIO, start: int, index: int) -> str:
    """The key in the tar header at `start`, or `#index` when the header itself is unreadable."""
    f.seek(int(start))
    try:
        return parse_header(f.read(TAR_BLOCK))[0].split(".", 1)[0]
    except ValueError:
        return f"#{index}"


def load_samples(reader: ShardReader, count: int, seed: int) -> torch.Tensor:
    """`count` random samples (all, if the split holds fewer) of the reader's split as uint8
    (N, C, H, W), in split order; the same seed picks the same samples."""
    sizes = np.array([s.num_samples for s in reader.source.shards])
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(sizes.sum(), size=min(count, int(sizes.sum())), replace=False))
    starts = np.cumsum(sizes) - sizes
    images = []
    for pick in picks:
        shard = int(np.searchsorted(starts, pick, side="right") - 1)
        _, pixels = reader.image(shard, int(pick - starts[shard]))
        images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1))  # (C, H, W)
    return torch.stack(images)


def sample_images(cfg: DataConfig, split: str, count: int, seed: int) -> torch.Tensor:
    """`count` random samples of `split` as uint8 (N, C, H, W), wherever data.shards points
    (remote shards through the cache): e.g. the real images SWD compares against."""
    source = resolve_source(cfg, split)
    reader = ShardReader(source, build_cache(cfg) if source.urls is not None else None)
    try:
        return load_samples(reader, count, seed)
    finally:
        reader.close()


# -- the per-worker iterable --------------------------------------------------------------


class PlanDataset(IterableDataset):
    """Yields this rank's batches from (epoch, samples_seen) on, split among DataLoader workers.

    Items are {"image": uint8 (B, C, H, W) channels_last, "key": [str], "corrupt": [CorruptReport]} or
    {"error": ShardganError} (raised by the main process, so the user sees one line).
    """

    def __init__(self, source: ShardSource, cfg: DataConfig, rank: int, world_size: int):
        super().__init__()
        self.source = source
        self.cache = build_cache(cfg) if source.urls is not None else None
        self.prefetch_shards = cfg.prefetch_shards
        self.seed = cfg.seed
        self.batch_size = cfg.batch_size
        self.on_corrupt = cfg.on_corrupt
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.samples_seen = 0
        self._order: tuple[int, np.ndarray] | None = None

    def plan(self, epoch: int, samples_seen: int) -> RankPlan:
        """This rank's plan of `epoch` from `samples_seen` on (the loader's counters, or the ones set for an iterator)."""
        return RankPlan(epoch, samples_seen, self.source.num_samples, self.world_size, self.rank, self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's global order, cached (every batch of a worker indexes into it)."""
        if self._order is None or self._order[0] != epoch:
            sizes = [s.num_samples for s in self.source.shards]
            self._order = (epoch, epoch_order(sizes, self.seed, epoch))
        return self._order[1]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self.plan(self.epoch, self.samples_seen)
        order = self.order(plan.epoch)
        batches = [order[plan.batch_slice(b)] for b in plan.worker_batches(worker, num_workers)]
        reader, prefetcher = self.open_reader(batches)
        try:
            for positions in batches:
                if prefetcher is not None:
                    prefetcher.reading(int(positions[0, 0]))
                try:
                    batch = self.read_batch(reader, positions, shared=info is not None)
                except DataError as e:
                    yield {"error": e}
                    return
                yield batch
        finally:
            if prefetcher is not None:
                prefetcher.close()
            reader.close()

    def open_reader(self, batches: list[np.ndarray]) -> tuple[ShardReader, Prefetcher | None]:
        """A reader; for remote shards also a prefetcher over this worker's shards in first-use order."""
        if self.cache is None:
            return ShardReader(self.source), None
        cache, shards, urls = self.cache, self.source.shards, self.source.urls
        sequence = list(dict.fromkeys(np.concatenate(batches)[:, 0].tolist())) if batches else []
        prefetcher = Prefetcher(lambda s: cache.ensure(urls[s], shards[s]), sequence, self.prefetch_shards)
        return ShardReader(self.source, cache), prefetcher

    def read_batch(self, reader: ShardReader, positions: np.ndarray, shared: bool) -> dict[str, Any]:
        """Read + decode the samples at `positions` ((B, 2) [shard, index]) into one batch.

        A corrupt sample is replaced by a good one of the same batch (on_corrupt=skip), so the
        batch shape and every rank's batch count stay the same.
        """
        manifest = self.source.manifest
        images = torch.empty((len(positions), manifest.height, manifest.width, manifest.channels), dtype=torch.uint8)
        if shared:
            images.share_memory_()  # workers hand the batch over without another copy
        pixels = images.numpy()  # (B, H, W, C): samples decode into it with a plain copy
        keys: list[str] = [""] * len(positions)
        corrupt: list[CorruptReport] = []
        bad: list[int] = []
        for j, (shard, index) in enumerate(positions.tolist()):
            try:
                keys[j], image = reader.image(shard, index)
                np.copyto(pixels[j], image)
            except CorruptSampleError as e:
                if self.on_corrupt == "fail":
                    raise
                corrupt.append(CorruptReport(e.shard, e.key, e.reason))
                bad.append(j)
        _fill_from_good(pixels, keys, bad, corrupt)
        # (B, C, H, W) view in channels_last memory format, what the trainer converts to anyway.
        return {"image": images.permute(0, 3, 1, 2), "key": keys, "corrupt": corrupt}


def _fill_from_good(images: np.ndarray, keys: list[str], bad: list[int], corrupt: list[CorruptReport]) -> None:
    """Overwrite the bad slots with the batch's good samples in turn; all bad -> DataError."""
    if not bad:
        return
    good = sorted(set(range(len(keys))) - set(bad))
    if not good:
        shards = sorted({r.shard for r in corrupt})
        raise DataError(f"every sample of a batch is corrupt (shards {', '.join(shards)}; first: {corrupt[0].key}: {corrupt[0].reason})")
    for n, j in enumerate(bad):
        src = good[n % len(good)]
        images[j] = images[src]
        keys[j] = keys[src]


# -- the loader the trainer uses ----------------------------------------------------------


def default_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values win; else torch.distributed's when initialized; else a single process."""
    torch_dist = torch.distributed
    initialized = torch_dist.is_available() and torch_dist.is_initialized()
    if world_size is None:
        world_size = torch_dist.get_world_size() if initialized else 1
    if rank is None:
        rank = torch_dist.get_rank() if initialized else 0
    return rank, world_size


class ShardLoader:
    """Batches of this rank for the rest of the current epoch, with exact save/restore.

    The position is (epoch, samples_seen): global samples handed out in this epoch. The order
    of an epoch depends on neither world size nor workers, so a restore may change the worker
    count (exact) or the world size / batch size (elastic: continues at samples_seen, nothing
    repeated or skipped; only the end-of-epoch remainder may differ).
    """

    def __init__(self, cfg: DataConfig, *, rank: int | None = None, world_size: int | None = None, split: str | None = None):
        self.cfg = cfg
        self.rank, self.world_size = default_rank_world(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise DataError(f"rank {self.rank} is outside world size {self.world_size}")
        self.source = resolve_source(cfg, split or cfg.split)
        self.manifest = self.source.manifest
        self.epoch = 0
        self.samples_seen = 0
        self.corrupt: list[CorruptReport] = []
        """Every sample skipped so far (on_corrupt=skip), in the order the batches came out."""
        self._dataset = PlanDataset(self.source, cfg, self.rank, self.world_size)
        if self.batches_per_epoch == 0:
            raise DataError(
                f"global batch {cfg.batch_size * self.world_size} (batch_size {cfg.batch_size} x {self.world_size} ranks) "
                f"is larger than split {self.source.split!r} ({self.source.num_samples} samples)"
            )
        self._dataloader = self._build_dataloader()

    def _build_dataloader(self) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            self._dataset,
            batch_size=None,  # workers yield whole batches
            num_workers=workers,
            pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
            prefetch_factor=self.cfg.prefetch_factor if workers > 0 else None,
            persistent_workers=False,  # fresh workers per iterator pick up a restored position
            worker_init_fn=ignore_in_worker if workers > 0 else None,  # preemption is the trainer's to handle
        )

    def _plan(self) -> RankPlan:
        return self._dataset.plan(self.epoch, self.samples_seen)

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return self._plan().batches_per_epoch

    def __len__(self) -> int:
        return self._plan().num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch; afterwards epoch += 1 and samples_seen = 0."""
        self._dataset.epoch, self._dataset.samples_seen = self.epoch, self.samples_seen
        self._dataset.order(self.epoch)  # computed once here; forked workers inherit it
        with blocked():  # workers are forked here
            batches = iter(self._dataloader)
        _LIVE.add(batches)
        try:
            for item in batches:
                if "error" in item:
                    raise item["error"]
                self._note_corrupt(item.pop("corrupt"))
                self.samples_seen += self.global_batch
                yield item
        finally:
            _stop_workers(batches)
        self.epoch += 1
        self.samples_seen = 0

    def _note_corrupt(self, reports: list[CorruptReport]) -> None:
        for r in reports:
            log.warning("skipped corrupt sample %s in %s: %s", r.key, r.shard, r.reason)
        self.corrupt.extend(reports)

    def state_dict(self) -> dict[str, Any]:
        """The position; taken after an epoch's last batch it already points at the next epoch."""
        epoch, samples_seen = (self.epoch, self.samples_seen) if len(self) > 0 else (self.epoch + 1, 0)
        return {
            "version": STATE_VERSION,
            "epoch": epoch,
            "samples_seen": samples_seen,
            "seed": self.cfg.seed,
            "num_samples": self.source.num_samples,
            "fingerprint": self.source.fingerprint,
            "world_size": self.world_size,
            "batch_size": self.cfg.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position, checked field by field; call before iterating."""
        _check_state(state, self.state_dict())
        self.epoch, self.samples_seen = state["epoch"], state["samples_seen"]
        if (state["world_size"], state["batch_size"]) != (self.world_size, self.cfg.batch_size):
            log.warning(
                "loader resumes elastically at sample %d of epoch %d: world size %d -> %d, batch size %d -> %d",
                self.samples_seen, self.epoch, state["world_size"], self.world_size, state["batch_size"], self.cfg.batch_size,
            )
        if len(self) == 0:  # less than one global batch left: that is the epoch's remainder
            self.epoch, self.samples_seen = self.epoch + 1, 0


_LIVE: weakref.WeakSet = weakref.WeakSet()
"""DataLoader iterators whose workers may still run."""


def _stop_workers(batches: Iterator[Any]) -> None:
    """Stop the DataLoader workers now. They ignore SIGTERM (stop.ignore_in_worker), so
    multiprocessing's exit-time terminate() cannot stop them: an epoch left early (an error, a
    `break`, a generator never closed) must be stopped here, or the process hangs at exit. torch
    has no public close for its iterator, hence the private call."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in getattr(batches, "_workers", []):  # one that is stuck ignores the SIGTERM torch sends
        if worker.is_alive():
            worker.kill()
            worker.join()


@atexit.register  # runs before multiprocessing's own exit handler, registered earlier
def _stop_all_workers() -> None:
    for batches in list(_LIVE):
        _stop_workers(batches)


def _check_state(state: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a state that cannot continue this dataset, saying which field differs."""
    if not isinstance(state, dict):
        raise DataError(f"loader state is a {type(state).__name__}, expected a dict")
    for name in current:
        if name not in state:
            raise DataError(f"loader state has no {name!r} field")
        if type(state[name]) is not type(current[name]):
            raise DataError(f"loader state field {name!r} is {state[name]!r}, expected a {type(current[name]).__name__}")
    if state["version"] != STATE_VERSION:
        raise DataError(f"loader state version {state['version']} is not supported (this shardgan writes {STATE_VERSION})")
    if state["seed"] != current["seed"]:
        raise DataError(f"data.seed changed: checkpoint has {state['seed']}, config has {current['seed']}")
    if state["num_samples"] != current["num_samples"]:
        raise DataError(f"dataset changed: checkpoint has {state['num_samples']} samples, the shards now hold {current['num_samples']}")
    if state["fingerprint"] != current["fingerprint"]:
        raise DataError("dataset changed: the shard list or shard contents differ from the checkpoint's (re-packed?)")
    if state["epoch"] < 0 or not 0 <= state["samples_seen"] <= current["num_samples"]:
        raise DataError(f"loader state out of range: epoch {state['epoch']}, samples_seen {state['samples_seen']}")

