"""The streaming loader: equal batches per rank, exact resume, corrupt samples skipped in step.

The loader follows `plan.RankPlan`: it computes the epoch's global order and this rank's
batches from the resume point on. How each format is read was chosen by measurement
(tools/bench_loader.py):
- compressed samples are decoded by `data.num_workers` reading processes living as long as
  the loader (workers.py), each batch with one `ShardReader.read_batch` call into a ring of
  pre-allocated batch buffers in shared memory (pinned on CUDA). Only a slot number, the
  positions and the keys cross the process boundary. Threads in the training process lost
  for jpg too, where simplejpeg releases the GIL (0.90-0.94x), and for png (0.69-0.96x);
- raw samples (and num_workers=0) are read in the training thread, a group of batches per
  call, one index_select per shard run that torch's own threads share: a hand-over to another
  thread or process cost more than the copy itself.
Nothing starts at an epoch boundary, so it costs nothing; the position is one number,
`samples_seen`, checkpointed in `state_dict()`. Batch b's content depends only on b, never on
which process read it or with which group.

Batches are handed out in order, as views of the ring: a batch stays valid until two more
have been taken (`clone()` it to keep it longer). With `device` set to a CUDA device the
loader copies each batch there asynchronously and the ring slot is reused only once that
copy has finished, so the training loop never waits for it.

Remote shards (http(s), s3, `pipe:` URLs) are fetched whole into the node-local cache
(cache.py), verified against the manifest's sha256, and read from there the same way, so
resuming deep into an epoch costs the same for them as for local shards. Local shards are read
ahead (`data.read_ahead`, readahead.py): the rank's next shard, in large sequential requests,
into the page cache, so a parallel file system is not read one small random request per sample.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .cache import Prefetcher, cache_warnings
from .config import DataConfig
from .errors import DataError
from .nvjpeg import decode_batch
from .plan import RankPlan, epoch_order
from .readahead import ReadAhead
from .reader import CorruptReport, ShardReader
from .source import build_cache, resolve_source
from .workers import ReadingProcesses

log = logging.getLogger(__name__)

STATE_VERSION = 2
"""2 added canonical_nodes; a version 1 state is read as canonical_nodes 1, the order it used."""
HOLD = 2
"""Batches handed out that stay valid: the one in use and the one before it."""
GROUP_BYTES = 8 << 20
"""Raw batches are read in the training thread a group at a time, one copy per shard run for
the whole group: up to this many bytes (at most MAX_GROUP batches), so that the ring, two groups,
stays in the L3 cache. At 88x66, batch 64 (1.1 MB), groups of 1, 2, 4, 7, 10, 14 batches read
0.51, 0.57, 0.59, 0.60, 0.55, 0.55 M samples/s (interleaved, medians; 2 cores, 32 MB L3)."""
MAX_GROUP = 16
BLOCK = 256
"""Batches whose positions are looked up at once."""


class ShardLoader:
    """Batches of this rank for the rest of the current epoch, with exact save/restore.

    The position is (epoch, samples_seen): global samples handed out in this epoch. The order
    of an epoch depends on neither world size nor worker count, so a restore may change the
    worker count (exact) or the world size / batch size (elastic: continues at samples_seen,
    nothing repeated or skipped; only the end-of-epoch remainder may differ).
    """

    def __init__(self, cfg: DataConfig, *, rank: int = 0, world_size: int = 1, nodes: int = 1, split: str | None = None, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world size {world_size}")
        self.canonical_nodes = cfg.canonical_nodes or nodes
        """Fixed for a run (plan.py): the config's, else this start's node count; a restore brings the run's."""
        self._check_canonical_nodes()
        self.device = torch.device(device)
        self.source = resolve_source(cfg, split or cfg.split)
        self.manifest = self.source.manifest
        self.epoch = 0
        self.samples_seen = 0
        self.corrupt: list[CorruptReport] = []
        """Every sample skipped so far (on_corrupt=skip), in the order the batches came out."""
        if self.batches_per_epoch == 0:
            raise DataError(
                f"global batch {cfg.batch_size * world_size} (batch_size {cfg.batch_size} x {world_size} ranks) "
                f"is larger than split {self.source.split!r} ({self.source.num_samples} samples)"
            )
        if cfg.decode_device == "cuda" and (self.device.type != "cuda" or self.manifest.image_format != "jpg"):
            raise DataError(
                f"data.decode_device=cuda decodes JPEG shards on the training GPU; here the shards are "
                f"{self.manifest.image_format} and the device is {self.device} (pack with --format jpg, train on cuda)"
            )
        self._reader = ShardReader(self.source, build_cache(cfg, self.source))
        cache = self._reader.cache
        if cache is not None and rank == 0:
            share = sum(s.num_bytes for s in self.source.shards) // min(self.canonical_nodes, max(1, nodes))
            for line in cache_warnings(cache.directory, cache.limit_bytes, share):
                log.warning("%s", line)
        self._order: tuple[int, np.ndarray] | None = None
        # Chosen by measurement (the module's docstring); with nvjpeg this thread only reads bytes.
        self._num_workers = cfg.num_workers if cfg.decode_device == "cpu" and self.manifest.image_format != "raw" else 0
        self._ahead = self._num_workers * cfg.prefetch_factor
        batch_bytes = cfg.batch_size * self.manifest.height * self.manifest.width * self.manifest.channels
        self._group = min(MAX_GROUP, max(1, GROUP_BYTES // batch_bytes)) if self.manifest.image_format == "raw" and cfg.decode_device == "cpu" else 1
        """Batches read per call in this thread (the ring holds two groups)."""
        slots = self._ahead + HOLD if self._num_workers else 2 * self._group
        self._ring: torch.Tensor | None = None
        self._views: list[torch.Tensor] = []
        """Each ring slot as it is handed out: (B, C, H, W), channels_last in memory."""
        self._copied: list[torch.cuda.Event | None] = [None] * slots
        self._to_gpu = self.device.type == "cuda"
        self._copy_stream: torch.cuda.Stream | None = None
        """CUDA: the stream batches are copied to the GPU on, beside the training stream."""
        self._pending: deque[int] = deque()
        """Batches sent to the workers and not yet taken back, by number."""
        self._workers: ReadingProcesses | None = None
        self._finalizer = weakref.finalize(self, _shut_down, None, self._reader)

    # -- the plan ---------------------------------------------------------------------------

    def _plan(self) -> RankPlan:
        return RankPlan(self.epoch, self.samples_seen, self.source.num_samples, self.world_size, self.rank, self.cfg.batch_size, self.canonical_nodes)

    def _check_canonical_nodes(self) -> None:
        if self.global_batch % self.canonical_nodes:
            raise DataError(
                f"global batch {self.global_batch} (data.batch_size {self.cfg.batch_size} x {self.world_size} ranks) is not a multiple "
                f"of the run's {self.canonical_nodes} canonical nodes (data.canonical_nodes): each takes an equal share of every batch"
            )

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The epoch's global order, computed once per epoch."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order([s.num_samples for s in self.source.shards], self.cfg.seed, epoch))
        return self._order[1]

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return self._plan().batches_per_epoch

    def __len__(self) -> int:
        return self._plan().num_batches

    # -- batches ----------------------------------------------------------------------------

    def _buffers(self) -> None:
        """The ring, (slots, B, H, W, C) uint8, allocated once (in shared memory for the reading
        processes, pinned when batches go to CUDA), and the processes that fill it."""
        if self._ring is not None or self.cfg.decode_device == "cuda":
            return
        m = self.manifest
        shape = (len(self._copied), self.cfg.batch_size, m.height, m.width, m.channels)
        pin = self.cfg.pin_memory and self._to_gpu
        if self._num_workers == 0:
            self._ring = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
        else:
            self._ring = torch.empty(shape, dtype=torch.uint8).share_memory_()
            if pin:  # page-lock the shared pages in place, so the copies to the GPU are asynchronous
                torch.cuda.cudart().cudaHostRegister(self._ring.data_ptr(), self._ring.numel(), 0)
        self._views = [slot.permute(0, 3, 1, 2) for slot in self._ring]
        if self._num_workers == 0:
            return
        source, cache = self.source, self._reader.cache  # the same cache (and limit) in every process
        self._workers = ReadingProcesses(lambda: ShardReader(source, cache), self._ring, self._num_workers, self.cfg.on_corrupt)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _shut_down, self._workers, self._reader)

    def _read_here(self, plan: RankPlan, batches: _Batches) -> Iterator[dict[str, Any]]:
        """Read in this thread, a group of batches per call into one half of the ring (the other
        half holds the batches handed out last), or, with data.decode_device=cuda, one batch at a
        time straight onto the GPU. The first read is one batch: a group could span two shards,
        and a restore would wait for both layouts (2x the first batch at 90 % of an epoch)."""
        start, half = 0, 0
        while start < plan.num_batches:
            stop = min(start + (self._group if start else 1), plan.num_batches)
            if self.cfg.decode_device == "cuda":
                images, keys, corrupt = decode_batch(self._reader, batches(start, stop)[0], self.device, self.cfg.on_corrupt)
                yield self._hand_out(images, None, keys, corrupt)
            else:
                first = half * self._group
                for slot in range(first, first + stop - start):
                    self._wait_copied(slot)
                ring = self._ring.numpy()[first : first + stop - start]
                answers = self._reader.read_batches(batches(start, stop), ring, self.cfg.on_corrupt)
                for slot, (keys, corrupt) in enumerate(answers, first):
                    yield self._hand_out(self._views[slot], slot, keys, corrupt)
            start, half = stop, 1 - half

    def _read_in_workers(self, plan: RankPlan, batches: _Batches) -> Iterator[dict[str, Any]]:
        """The reading processes fill the ring `_ahead` batches ahead; batch b goes to process
        b % N, into slot b % slots, and is taken back in order."""
        slots, workers = len(self._views), self._workers

        def submit(b: int) -> None:
            self._wait_copied(b % slots)
            workers.send(b % len(workers), b % slots, batches(b, b + 1)[0])
            self._pending.append(b)

        for b in range(min(self._ahead, plan.num_batches)):
            submit(b)
        for b in range(plan.num_batches):
            self._pending.popleft()
            keys, corrupt = workers.receive(b % len(workers))
            if b + self._ahead < plan.num_batches:
                submit(b + self._ahead)  # into the slot of batch b - HOLD, no longer handed out
            yield self._hand_out(self._views[b % slots], b % slots, keys, corrupt)

    def _wait_copied(self, slot: int) -> None:
        """The slot's previous batch has reached the GPU, so the slot may be written again."""
        copied = self._copied[slot]
        if copied is not None:
            copied.synchronize()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch; afterwards epoch += 1 and samples_seen = 0."""
        self._drain()  # an earlier epoch left unfinished must not write into the ring any more
        plan = self._plan()
        order = self._epoch_order(plan.epoch)
        self._buffers()
        prefetcher = self._prefetcher(order, plan)
        batches = _Batches(plan, order, prefetcher)
        try:
            yield from (self._read_here if self._workers is None else self._read_in_workers)(plan, batches)
        finally:
            self._drain()
            if prefetcher is not None:
                prefetcher.close()
        self.epoch += 1
        self.samples_seen = 0

    def _hand_out(self, images: torch.Tensor, slot: int | None, keys: list[str], corrupt: list[CorruptReport]) -> dict[str, Any]:
        """The batch, counted; from a ring `slot` on its way to the GPU, copied while the GPU works."""
        for r in corrupt:
            log.warning("skipped corrupt sample %s in %s: %s", r.key, r.shard, r.reason)
        self.corrupt.extend(corrupt)
        self.samples_seen += self.global_batch
        if slot is not None and self._to_gpu:
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(self.device)
            training = torch.cuda.current_stream(self.device)
            with torch.cuda.stream(self._copy_stream):  # on a side stream: it overlaps the step still running
                images = images.to(self.device, non_blocking=True)
                self._copied[slot] = torch.cuda.Event()
                self._copied[slot].record()
            training.wait_stream(self._copy_stream)  # the next step starts once its batch is there
            images.record_stream(training)  # its memory is not reused before training is done with it
        return {"image": images, "key": keys}

    def _prefetcher(self, order: np.ndarray, plan: RankPlan) -> Prefetcher | None:
        """A thread that works through this rank's shards in first-use order: remote ones are
        downloaded into the cache, local ones read ahead into the page cache (readahead.py)."""
        cache, shards = self._reader.cache, self.source.shards
        if cache is not None:
            urls = self.source.urls
            return Prefetcher(lambda s: cache.ensure(urls[s], shards[s]), plan.shard_sequence(order), self.cfg.prefetch_shards)
        if self.cfg.read_ahead == 0:
            return None
        paths = [self.manifest.shard_path(info) for info in shards]
        read_ahead = ReadAhead(paths)
        return Prefetcher(read_ahead, plan.shard_sequence(order), self.cfg.read_ahead, needed=read_ahead.missing)

    def _drain(self) -> None:
        """Take back the answers of batches still being read (their errors belong to an epoch already left)."""
        while self._pending:
            b = self._pending.popleft()
            try:
                self._workers.receive(b % len(self._workers))
            except DataError:
                pass

    def close(self) -> None:
        """Stop the reading processes and unmap the shards (also done when the loader is collected)."""
        self._drain()
        self._finalizer()

    # -- the position -------------------------------------------------------------------------

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
            "canonical_nodes": self.canonical_nodes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position, checked field by field; call before iterating."""
        if isinstance(state, dict) and state.get("version") == 1:
            state = {**state, "version": STATE_VERSION, "canonical_nodes": 1}
        _check_state(state, self.state_dict())
        if self.cfg.canonical_nodes and state["canonical_nodes"] != self.cfg.canonical_nodes:
            raise DataError(f"data.canonical_nodes changed: checkpoint has {state['canonical_nodes']}, config has {self.cfg.canonical_nodes} (it fixes the epoch order)")
        self.canonical_nodes = state["canonical_nodes"]
        self._check_canonical_nodes()
        self.epoch, self.samples_seen = state["epoch"], state["samples_seen"]
        if (state["world_size"], state["batch_size"]) != (self.world_size, self.cfg.batch_size):
            log.warning(
                "loader resumes elastically at sample %d of epoch %d: world size %d -> %d, batch size %d -> %d",
                self.samples_seen, self.epoch, state["world_size"], self.world_size, state["batch_size"], self.cfg.batch_size,
            )
        if len(self) == 0:  # less than one global batch left: that is the epoch's remainder
            self.epoch, self.samples_seen = self.epoch + 1, 0


class _Batches:
    """This rank's batch positions in one epoch, looked up BLOCK batches at a time; tells the
    prefetcher when the reading moves on to another shard (not every batch: a call may probe
    the page cache or wake its thread)."""

    def __init__(self, plan: RankPlan, order: np.ndarray, prefetcher: Prefetcher | None):
        self._plan, self._order, self._prefetcher = plan, order, prefetcher
        self._start, self._block = 0, order[:0].reshape(0, plan.batch_size, 2)
        self._shard = -1

    def __call__(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, B, 2): the positions of batches [start, stop)."""
        if start < self._start or stop > self._start + len(self._block):
            self._start = start
            self._block = self._plan.batch_positions(self._order, start, min(self._plan.num_batches, start + max(BLOCK, stop - start)))
        positions = self._block[start - self._start : stop - self._start]
        shard = int(positions[-1, 0, 0])
        if self._prefetcher is not None and shard != self._shard:
            self._shard = shard
            self._prefetcher.reading(shard)
        return positions


def _shut_down(workers: ReadingProcesses | None, reader: ShardReader) -> None:
    if workers is not None:
        workers.close()
    reader.close()


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
