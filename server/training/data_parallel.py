"""Data-parallel training under ``torchrun``: the few hooks a trainer needs.

A trainer that loops over minibatches calls three things and is otherwise unchanged:

    parallel = DataParallel.from_environment()      # one process, or torchrun's group
    forward = parallel.wrap(model, "forward_all")   # DistributedDataParallel when world > 1
    idx = parallel.shard(idx)                        # this rank's share of a global batch

With ``torchrun --nproc_per_node=N`` every rank sees the same global batches (same
seed), takes every N-th sample of each, and DistributedDataParallel averages the
gradients, so one optimiser step uses the whole global batch, as in one process.
Backend: ``gloo`` (CPU tensors, what the trainers use today); ``nccl`` for a trainer
that moves its model and batches to CUDA. Without torchrun's environment
(``WORLD_SIZE`` unset or 1) everything is a no-op. BatchNorm statistics stay per rank
(standard DDP), so results match one process within a tolerance, not bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel run (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1

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
        return nn.parallel.DistributedDataParallel(wrapped)

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch: every ``world_size``-th index."""
        return indices[self.rank :: self.world_size]
