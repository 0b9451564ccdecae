"""Data-parallel training under ``torchrun``: the few hooks a trainer needs.

A trainer whose loss is one module's forward calls three things and is otherwise unchanged:

    parallel = DataParallel.from_environment()      # one process, or torchrun's group
    forward = parallel.wrap(model, "forward_all")   # DistributedDataParallel when world > 1
    idx = parallel.shard(idx)                        # this rank's share of a global batch

A trainer whose loss is not one module's ``forward`` (several optimisers, gradients it
computes itself and assigns to ``.grad``) attaches to its optimiser instead of wrapping:

    parallel.attach(optimiser)    # same start on every rank; gradients averaged before step()
    idx = parallel.shard(idx)     # or rows = parallel.shard_rows(a, b, ...) for drawn batches

With ``torchrun --nproc_per_node=N`` every rank draws the same global batches (same
seed), takes every N-th sample of each, and the gradients of the batch-mean losses are
averaged weighted by each rank's share (so a batch that N does not divide is exact too):
one optimiser step uses the whole global batch, as in one process. A rule whose update
is a batch *sum* adds its shares with :meth:`DataParallel.summed`.
Backend: ``gloo`` (CPU tensors, what the trainers use today); ``nccl`` for a trainer
that moves its model and batches to CUDA. Without torchrun's environment
(``WORLD_SIZE`` unset or 1) everything is a no-op. BatchNorm statistics stay per rank
(standard DDP), so a model with BatchNorm matches one process within a tolerance, not
bit for bit. docs/scaling.md lists which trainers are data-parallel and why the others
are not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class _Method(nn.Module):
    """Exposes ``module.<method>`` as ``forward`` so DDP can wrap it (e.g. ``forward_all``)."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, self.method)(*args, **kwargs)


@dataclass
class DataParallel:
    """This process's place in a data-parallel run (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    #: this rank's share of the last global batch × world size (1 when shares are equal)
    share_weight: float = field(default=1.0, compare=False)

    @classmethod
    def from_environment(cls, backend: str = "gloo") -> DataParallel:
        """Join torchrun's process group (``RANK``/``WORLD_SIZE`` set), or run alone."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size())

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that shows progress and registers results."""
        return self.rank == 0

    def wrap(self, module: nn.Module, method: str = "forward") -> nn.Module:
        """``module.<method>`` as a callable module; gradients averaged across ranks."""
        wrapped = _Method(module, method)
        if not self.is_distributed:
            return wrapped
        ddp = nn.parallel.DistributedDataParallel(wrapped)
        ddp.register_comm_hook(self, _weighted_allreduce)
        return ddp

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch: every ``world_size``-th index."""
        return self.shard_rows(indices)[0]

    def shard_rows(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The same rows of each tensor (a batch drawn identically on every rank)."""
        if not self.is_distributed:
            return tensors
        total = len(tensors[0])
        shares = tuple(tensor[self.rank :: self.world_size] for tensor in tensors)
        self.share_weight = len(shares[0]) * self.world_size / total if total else 0.0
        return shares

    def attach(self, optimiser: torch.optim.Optimizer) -> None:
        """Start every rank from rank 0's parameters and average the gradients across ranks
        before each ``optimiser.step()``; a no-op in one process."""
        if not self.is_distributed:
            return
        params = [p for group in optimiser.param_groups for p in group["params"]]
        with torch.no_grad():
            for param in params:
                dist.broadcast(param, src=0)
        optimiser.register_step_pre_hook(lambda *_: self.average_gradients(params))

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """``.grad`` of every parameter := its mean over the ranks, weighted by their shares
        of the batch. A parameter without a gradient is skipped: every rank runs the same
        code, so it has none on any rank."""
        for param in params:
            if param.grad is not None:
                param.grad *= self.share_weight / self.world_size
                dist.all_reduce(param.grad)

    def summed(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor summed over the ranks (for a rule whose update is a batch *sum*)."""
        if not self.is_distributed:
            return tensors
        total = [tensor.clone() for tensor in tensors]
        for tensor in total:
            dist.all_reduce(tensor)
        return total


def _weighted_allreduce(parallel: DataParallel, bucket):  # noqa: ANN001, ANN202
    """DDP's gradient all-reduce (a ``dist.GradBucket`` in, a future of its tensor out),
    each rank weighted by its share of the global batch. Not annotated: DDP checks the
    annotations as objects, and this module's are strings (``from __future__``)."""
    tensor = bucket.buffer().mul_(parallel.share_weight / parallel.world_size)
    work = dist.all_reduce(tensor, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


#: one process on its own (the default of every hook that takes a ``DataParallel``)
ALONE = DataParallel()
