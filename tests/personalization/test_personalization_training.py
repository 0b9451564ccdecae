"""H training pieces: device masks, the fit on synthetic devices, the registry hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import make_tiny_bundle

from server.training.hypernetwork import (
    TRAINER,
    DeviceEmbeddings,
    HyperNetworkTrainConfig,
    device_rankings,
    draw_masks,
    fit_hypernetwork,
)
from shared.channel_importance import channel_importance, top_alpha_channels


def test_rankings_put_the_importance_top_first():
    z = torch.rand(40, 10) * torch.linspace(0.1, 2.0, 10)
    rng = np.random.default_rng(0)
    ranks = device_rankings(z, window=40, count=1, rng=rng)[0]
    top3 = top_alpha_channels(channel_importance(z.numpy()), 0.3)
    assert sorted(torch.nonzero(ranks < 3).flatten().tolist()) == top3.tolist()


def test_masks_have_the_drawn_sizes():
    rankings = torch.stack([torch.randperm(20) for _ in range(3)])[None].repeat(2, 1, 1)
    generator = torch.Generator().manual_seed(0)
    masks = draw_masks(torch.zeros(500, dtype=torch.long), rankings, (0.1, 0.5), 0.3, generator)
    sizes = masks.sum(1)
    assert set(sizes.tolist()) == {2.0, 10.0}
    assert 0.35 < float((sizes == 2).float().mean()) < 0.65


def test_fit_on_synthetic_shifted_devices_beats_the_global_head():
    """Devices whose shift permutes the class evidence: a global head cannot fit all, H can."""
    torch.manual_seed(0)
    bundle = make_tiny_bundle()
    d, c = bundle.config.embed_dim, bundle.config.num_classes
    centres = torch.randn(c, d) * 2

    def device(shift: int, n: int):
        y = torch.arange(n) % c
        z = torch.relu(centres[(y + shift) % c] + 0.3 * torch.randn(n, d) + 2.0)
        z[:, shift] += 4.0  # the device's "camera" signature
        return z, y

    shifts = [("", 0), ("a", 5), ("b", 5)]
    train = [device(i, 240) for i in range(3)]
    val = [device(i, 90) for i in range(3)]
    embeddings = DeviceEmbeddings(
        shifts,
        [t[0] for t in train],
        [t[1] for t in train],
        [v[0] for v in val],
        [v[1] for v in val],
    )
    config = HyperNetworkTrainConfig(epochs=30, batch_size=120, lr=1e-2, window=32, threads=1)
    model, metrics = fit_hypernetwork(config, bundle, embeddings)
    assert not model.training
    assert metrics["val_accuracy_personalised"] > metrics["val_accuracy_global"] + 0.2


def test_trainer_needs_a_base_model():
    assert TRAINER.needs_registry and TRAINER.name == "hypernetwork"
    with pytest.raises(ValueError, match="base_model_path"):
        TRAINER.train(HyperNetworkTrainConfig(), registry=None)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        HyperNetworkTrainConfig(alphas=(0.0,))
