"""Process group set-up from torchrun's environment, with single-process defaults, and agreement.

Every cross-rank decision (stop now, loss finite, checkpoint written) is one small all-reduce
so that all ranks take the same branch at the same step; a rank that decided alone would leave
the others waiting in a collective forever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from .errors import ConfigError


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


def init(device_name: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); none without torchrun."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank, world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if "RANK" in os.environ and not torch_dist.is_initialized():  # under torchrun, even alone: checks nccl/gloo
        backend = "nccl" if device.type == "cuda" else "gloo"
        store, _, _ = next(torch_dist.rendezvous("env://"))
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # The agent's store outlives --max-restarts: without a per-attempt prefix the new
            # workers read the dead workers' addresses and fail to connect (pytorch issue
            # #167288). Not otherwise: each round's rank 0 then opens a fresh store, and a node
            # that replaces a lost one starts counting restarts at 0 (another prefix: a hang).
            store = torch_dist.PrefixStore(f"shardgan/attempt_{restart_count()}", store)
        torch_dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank, device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def backend() -> str:
    """The process group's backend (nccl, gloo), or `none` for a plain single process."""
    return str(torch_dist.get_backend()) if torch_dist.is_initialized() else "none"


def shutdown() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def agree_any(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of `flags` over all ranks (MAX all-reduce); local when alone."""
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return list(flags)
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks (float64); local when alone."""
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t.tolist()


def agree_all(flag: bool, device: torch.device) -> bool:
    """True only if `flag` holds on every rank (MIN all-reduce)."""
    return not agree_any([not flag], device)[0]


def gather_to_main(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (all ranks receive it; rank 0 uses it)."""
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_from_main(obj: Any) -> Any:
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]
