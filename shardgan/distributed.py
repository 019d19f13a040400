"""Process group set-up from torchrun's environment, with single-process defaults, and agreement.

Every cross-rank decision is agreed so that all ranks take the same branch at the same step; a
rank that decided alone would leave the others waiting in a collective forever. A failure (a
checkpoint not written, a resume or evaluation set-up that failed) is gathered by
`first_failure`, so every rank raises the same line. The per-step decisions (`LateAgreement`) are
all-reduced on the device and read one step late, so an ordinary step never waits for the GPU;
work only rank 0 does (evaluation) is waited for in short heartbeats (`run_on_main`), so no
collective waits longer than `train.collective_timeout_s` however long the work takes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

from .errors import ConfigError, ShardganError

T = TypeVar("T")
HEARTBEATS_PER_TIMEOUT = 10
"""`run_on_main` lets the ranks meet this many times per collective timeout (at most every 10 s)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    local_world_size: int = 1
    """Ranks on this node (torchrun gives every node the same number, numbered consecutively)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // self.local_world_size)


def resolve_device(name: str, local_rank: int, world_size: int = 1, visible: int | None = None) -> torch.device:
    """`auto` -> this rank's GPU if CUDA is available, else CPU; `cuda` -> this rank's GPU.

    This rank's GPU is the one it sees when it sees one (SLURM's --gpus-per-task and
    per-rank CUDA_VISIBLE_DEVICES hide the others: it is cuda:0 there, whatever LOCAL_RANK
    says), else cuda:LOCAL_RANK. An explicit cuda:N with more than one rank would put every
    rank on one GPU, so it is refused. `visible` stands in for torch.cuda.device_count().
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if device.index is not None:
        if world_size > 1:
            raise ConfigError(f"train.device={name} under torchrun with {world_size} ranks would put every rank on one GPU; use cuda (each rank its own)")
        return device
    visible = torch.cuda.device_count() if visible is None else visible
    if visible == 1:
        return torch.device("cuda", 0)
    if local_rank >= visible:
        raise ConfigError(f"LOCAL_RANK {local_rank} but this process sees {visible} GPUs (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return torch.device("cuda", local_rank)


def init(device_name: str = "auto", timeout_s: float = 600.0, backend_name: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); none without torchrun.
    `timeout_s` bounds every collective (nccl and gloo alike), and a gloo group on the CPU beside
    an nccl one carries `run_on_main`'s heartbeats without touching the GPU."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank, 1 if backend_name == "gloo" else world_size)  # gloo: ranks may share a GPU
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if "RANK" in os.environ and not torch_dist.is_initialized():  # under torchrun, even alone: checks nccl/gloo
        backend = "nccl" if device.type == "cuda" and backend_name == "auto" else "gloo"
        store, _, _ = next(torch_dist.rendezvous("env://"))
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # The agent's store outlives --max-restarts: without a per-attempt prefix the new
            # workers read the dead workers' addresses and fail to connect (pytorch issue
            # #167288). Not otherwise: each round's rank 0 then opens a fresh store, and a node
            # that replaces a lost one starts counting restarts at 0 (another prefix: a hang).
            store = torch_dist.PrefixStore(f"shardgan/attempt_{restart_count()}", store)
        timeout = timedelta(seconds=timeout_s)
        torch_dist.init_process_group(
            backend, store=store, rank=rank, world_size=world_size, timeout=timeout, device_id=device if device.type == "cuda" else None,
        )  # fmt: skip
        if backend != "gloo":
            _HOST_GROUP.append(torch_dist.new_group(backend="gloo", timeout=timeout))
    return DistInfo(rank, world_size, local_rank, device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def backend() -> str:
    """The process group's backend (nccl, gloo), or `none` for a plain single process."""
    return str(torch_dist.get_backend()) if torch_dist.is_initialized() else "none"


def shutdown() -> None:
    _HOST_GROUP.clear()
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


_HOST_GROUP: list[Any] = []
"""The gloo group on the CPU beside an nccl default group (empty: the default group is gloo, or none)."""


def restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of a tensor over all ranks, left where it is (nothing is read on the host)."""
    if _alone():
        return value
    value = value.clone()
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.SUM)
    return value


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if _alone():
        return [obj]
    out: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def first_failure(problem: Any) -> tuple[int, Any] | None:
    """Collective: each rank's `problem` (falsy where it has none); the lowest rank that has one,
    with it, on every rank, so that all stop together with the same one line. The one way ranks
    agree to raise, also for work rank 0 alone tried (every other rank passes "")."""
    return next(((rank, p) for rank, p in enumerate(all_gather_objects(problem)) if p), None)


def broadcast_from_main(obj: Any) -> Any:
    if _alone():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def _alone() -> bool:
    return not torch_dist.is_initialized() or torch_dist.get_world_size() == 1


class LateAgreement:
    """Element-wise OR over ranks of each step's flags, read at the next step.

    `push` all-reduces step s's flags (a device flag, e.g. a non-finite loss, and host flags
    such as a stop signal) on the device without waiting, and returns step s-1's agreed flags:
    by then the GPU has finished step s-1 while step s is queued behind it, so reading them costs
    no stall. `now` waits for the newest (before a checkpoint). Every rank gets the same answer
    for the same step, so all take the same branch at the same step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pending: tuple[int, Any, torch.Tensor, torch.cuda.Event | None] | None = None

    def push(self, step: int, device_flag: torch.Tensor, host_flags: list[bool]) -> tuple[int, list[bool]] | None:
        """Start agreeing on step `step`'s [device_flag, *host_flags]; the previous step's
        (step, flags) if still unread, else None."""
        cuda = self.device.type == "cuda"
        host = torch.tensor([int(f) for f in host_flags], dtype=torch.int32, pin_memory=cuda)  # built on the host
        flags = torch.cat([device_flag.reshape(1).to(torch.int32), host.to(self.device, non_blocking=True)])
        work = None if _alone() else torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MAX, async_op=True)
        event = None
        if cuda:  # the answer comes back into page-locked memory, as the GPU gets to it
            if work is not None:
                work.wait()  # nccl: the current stream waits for the all-reduce, the host does not
                work = None
            answer = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
            answer.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            flags = answer
        ready = self.now()
        self.pending = (step, work, flags, event)
        return ready

    def now(self) -> tuple[int, list[bool]] | None:
        """The newest pushed step's agreed flags, waiting for them (None if already read)."""
        if self.pending is None:
            return None
        (step, work, flags, event), self.pending = self.pending, None
        if work is not None:
            work.wait()
        if event is not None:
            event.synchronize()
        return step, [bool(v) for v in flags.tolist()]


def run_on_main(work: Callable[[], T], heartbeat_s: float) -> T | None:
    """Rank 0 runs `work` (in a thread) while every rank meets in a tiny gloo all-reduce on the
    CPU at least every `heartbeat_s`: each collective waits at most that long, so an evaluation
    far longer than the collective timeout kills no rank, and no GPU is touched while waiting.
    Returns `work()` on rank 0, None elsewhere; an error in `work` raises on rank 0 and stops
    the other ranks with a ShardganError."""
    if _alone():
        return work()
    group = _HOST_GROUP[0] if _HOST_GROUP else None
    main = torch_dist.get_rank() == 0
    state = torch.zeros(1, dtype=torch.int32)  # 0 running, 1 done, 2 failed
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shardgan-main-work") as pool:
        future = pool.submit(work) if main else None
        while True:
            if future is not None:
                try:
                    future.exception(timeout=heartbeat_s)
                    state.fill_(2 if future.exception() is not None else 1)
                except TimeoutError:
                    state.fill_(0)
            else:
                state.zero_()
            torch_dist.all_reduce(state, op=torch_dist.ReduceOp.MAX, group=group)
            if int(state[0]) != 0:  # the host tensor of the heartbeat: no device involved
                break
    if future is not None:
        return future.result()
    if int(state[0]) == 2:
        raise ShardganError("rank 0's evaluation failed (see its log)")
    return None
