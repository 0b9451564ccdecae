"""Run by tests/training/test_data_parallel.py, alone or under torchrun.

``python ddp_worker.py KIND OUT_DIR``: trains with the data-parallel hooks and saves
this rank's final parameters to ``OUT_DIR/rank<R>.pt``. KIND ``mlp`` is a small
BatchNorm-free model trained through either hook, ``wrap`` and ``attach`` (must equal one
process to rounding); ``base`` is the real
base-model trainer on a few generated clips; ``hub`` is three real trainers in small
configurations: the HyperNetwork (gradients averaged through ``attach``), Forward-Forward
(one optimiser per layer) and the predictive-coding backprop baseline (batch-*sum* rule).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from server.training.data_parallel import DataParallel


def train_mlp(seed: int, hook: str = "wrap") -> nn.Module:
    """``hook`` "wrap" (DDP) or "attach" (optimiser hook); batches of 15 of 96 samples, so
    the last batch of each epoch splits 3/3 and the others 8/7 (weighted shares)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 10, generator=generator)
    y = (x[:, :3].sum(dim=1) > 0).long()
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 2))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    parallel = DataParallel.from_environment()
    if hook == "wrap":
        forward = parallel.wrap(model)
    else:
        forward = model
        parallel.attach(optimiser)
    for _ in range(3):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(order), 15):
            idx = parallel.shard(order[start : start + 15])
            loss = nn.functional.cross_entropy(forward(x[idx]), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.named_parameters()}


def train_base(seed: int) -> nn.Module:
    from server.training.base_model import BaseModelConfig, train_base_model

    data = {"train_per_class": 16, "val_per_class": 4, "test_per_class": 4,
            "ood_per_action": 4, "far_count": 8}  # fmt: skip
    config = BaseModelConfig(
        epochs=2, batch_size=32, widths=(4, 8, 8), embed_dim=16, seed=seed, data=data, threads=1
    )
    return train_base_model(config).model


def synthetic_devices(bundle, count: int, n: int) -> Any:
    """Devices whose camera adds an offset to the embedding (fixed seed: the same data
    whatever the training seed)."""
    from server.training.device_embeddings import DeviceSet
    from shared.data.device_shifts import DeviceProfile

    generator = torch.Generator().manual_seed(123)
    d, c = bundle.config.embed_dim, bundle.config.num_classes
    centres = torch.randn(c, d, generator=generator)
    y = torch.arange(n) % c
    z = [centres[y] + 0.3 * torch.randn(n, d, generator=generator)
         + torch.randn(d, generator=generator) for _ in range(count)]  # fmt: skip
    profiles = [DeviceProfile((), i) for i in range(count)]
    return DeviceSet(profiles, torch.stack(z), y.repeat(count, 1))


def train_hypernetwork(seed: int) -> dict[str, torch.Tensor]:
    from support import make_tiny_bundle

    from server.training.hypernetwork import HyperNetworkTrainConfig, fit_hypernetwork

    bundle = make_tiny_bundle(seed=0)
    config = HyperNetworkTrainConfig(
        steps=40, batch_devices=16, window=16, lr=1e-2, threads=1, seed=seed
    )
    model, _ = fit_hypernetwork(config, bundle, synthetic_devices(bundle, 12, 32))
    return parameters(model)


def train_catalogue(method: str, seed: int, **settings: Any) -> dict[str, torch.Tensor]:
    """A catalogue trainer's final tensors (its artifact state, flattened)."""
    from server.training.catalog import get_trainer

    trainer = get_trainer(method)
    config = trainer.config_model.model_validate({"seed": seed, **settings})
    return dict(tensors(trainer.train(config).state))


def tensors(state: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(state, torch.Tensor):
        yield prefix, state.detach().clone()
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from tensors(value, f"{prefix}/{key}")
    elif isinstance(state, list | tuple):
        for index, value in enumerate(state):
            yield from tensors(value, f"{prefix}/{index}")


def train_hub(seed: int) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "hypernetwork": train_hypernetwork(seed),
        "ff": train_catalogue("ff", seed, epochs=1, hidden_sizes=[64, 64]),
        "pc_bp": train_catalogue("pc_bp", seed, epochs=1),
    }


def main() -> None:
    kind, out_dir = sys.argv[1], Path(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if kind == "hub":
        state: Any = train_hub(seed)
    elif kind == "mlp":
        state = {hook: parameters(train_mlp(seed, hook)) for hook in ("wrap", "attach")}
    else:
        state = parameters(train_base(seed))
    torch.save(state, out_dir / f"rank{DataParallel.from_environment().rank}.pt")


if __name__ == "__main__":
    main()
