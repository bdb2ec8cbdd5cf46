"""Multi-process data-parallel training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m medseg.train TASK`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address in their environment; :func:`setup` joins them in one process
group (NCCL on GPU, one GPU per process; gloo on CPU). Each process draws its own share of every epoch's
patches (:class:`ReplacementSampler`) and validates its share of the validation cases; MONAI's metric
handlers gather the per-case values from all ranks, so every rank sees the same validation metrics. Only
rank 0 writes checkpoints, logs to MLflow, evaluates at the end and exports the bundle.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_choice: str) -> Context:
    """Join the process group torchrun describes (once); a single process gets the trivial context."""
    if not launched():
        return Context()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = device_choice != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Context(rank, world, local)


def current() -> Context:
    if not dist.is_available() or not dist.is_initialized():
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def device_for(ctx: Context, device: torch.device) -> torch.device:
    """One GPU per process (``LOCAL_RANK``) under torchrun; the CPU stays the CPU."""
    if device.type == "cuda" and ctx.distributed:
        return torch.device("cuda", ctx.local_rank)
    return device


def wrap(net: torch.nn.Module, ctx: Context, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``net`` (batch norm synchronised across GPUs); ``net`` itself alone."""
    if not ctx.distributed:
        return net
    if device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index])
    return torch.nn.parallel.DistributedDataParallel(net)


def broadcast(value: Any, ctx: Context) -> Any:
    """Rank 0's ``value`` on every rank (e.g. the run folder, whose name holds a time stamp)."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, ctx: Context) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` in a single process."""
    if not ctx.distributed:
        return [value]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, value)
    return out


def any_rank(flags: list[bool], ctx: Context, device: torch.device) -> list[bool]:
    """Element-wise OR of ``flags`` over all ranks (so every rank stops at the same step)."""
    if not ctx.distributed:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def mean_over_ranks(value: float, ctx: Context, device: torch.device) -> float:
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / ctx.world


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ReplacementSampler(DistributedSampler):
    """Each epoch, ``num_samples * world`` case indices drawn with replacement from a generator seeded by
    (seed, epoch); rank r takes every world-th index from r on.

    Own sampler because torch's DistributedSampler draws without replacement over a shard of the cases,
    while training here draws a fixed number of patches per epoch from all cases: with this one, N processes
    with batch B see exactly the patches of one process with batch N x B, and a resumed run (epoch set by
    MONAI's trainer through ``set_epoch``) draws what the uninterrupted run drew.
    """

    def __init__(self, dataset: Any, num_samples: int, ctx: Context, seed: int) -> None:
        super().__init__(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=seed)
        self.per_rank = num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 100003 + self.epoch)
        drawn = torch.randint(len(self.dataset), (self.per_rank * self.num_replicas,), generator=g)
        return iter(drawn[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.per_rank
