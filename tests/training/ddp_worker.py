"""Run by tests/training/test_data_parallel.py, alone or under torchrun.

``python ddp_worker.py KIND OUT_DIR``: trains with the data-parallel hooks and saves
this rank's final parameters to ``OUT_DIR/rank<R>.pt``. KIND ``mlp`` is a small
BatchNorm-free model (DDP must equal one process to rounding); ``base`` is the real
base-model trainer on a few generated clips.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from server.training.data_parallel import DataParallel


def train_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 10, generator=generator)
    y = (x[:, :3].sum(dim=1) > 0).long()
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 2))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    parallel = DataParallel.from_environment()
    forward = parallel.wrap(model)
    for _ in range(3):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(order), 16):
            idx = parallel.shard(order[start : start + 16])
            loss = nn.functional.cross_entropy(forward(x[idx]), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model


def train_base(seed: int) -> nn.Module:
    from server.training.base_model import BaseModelConfig, train_base_model

    data = {"train_per_class": 16, "val_per_class": 4, "test_per_class": 4,
            "ood_per_action": 4, "far_count": 8}  # fmt: skip
    config = BaseModelConfig(
        epochs=2, batch_size=32, widths=(4, 8, 8), embed_dim=16, seed=seed, data=data, threads=1
    )
    return train_base_model(config).model


def main() -> None:
    kind, out_dir = sys.argv[1], Path(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    model = {"mlp": train_mlp, "base": train_base}[kind](seed)
    rank = DataParallel.from_environment().rank
    state = {name: value.detach().clone() for name, value in model.named_parameters()}
    torch.save(state, out_dir / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
