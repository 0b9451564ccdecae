"""H training pieces: device windows and masks, the fit on synthetic devices, the registry hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import make_tiny_bundle

from server.training.device_embeddings import DeviceSet, training_profiles
from server.training.hypernetwork import (
    TRAINER,
    HyperNetworkTrainConfig,
    device_windows,
    draw_masks,
    fit_hypernetwork,
)
from shared.channel_importance import channel_importance, top_alpha_channels
from shared.data.device_shifts import SHIFT_SPLIT, DeviceProfile


def test_windows_give_means_and_importance_rankings():
    z = (torch.rand(1, 40, 10) * torch.linspace(0.1, 2.0, 10)).float()
    means, positions = device_windows(z, window=40, count=1, rng=np.random.default_rng(0))
    top3 = top_alpha_channels(channel_importance(z[0].numpy()), 0.3)
    assert sorted(torch.nonzero(positions[0, 0] < 3).flatten().tolist()) == top3.tolist()
    assert torch.allclose(means[0, 0], z[0].mean(0), atol=1e-6)


def test_masks_have_the_drawn_sizes():
    positions = torch.stack([torch.randperm(20) for _ in range(500)])
    generator = torch.Generator().manual_seed(0)
    masks = draw_masks(positions, (0.1, 0.5), 0.3, generator)
    sizes = masks.sum(1)
    assert set(sizes.tolist()) == {2.0, 10.0}
    assert 0.35 < float((sizes == 2).float().mean()) < 0.65
    top = masks[(sizes == 2)]  # importance masks keep ranks 0 and 1 unless drawn at random
    kept = positions[(sizes == 2)][top.bool()].view(-1, 2)
    assert 0.5 < float((kept.max(1).values < 2).float().mean()) < 0.95


def test_training_devices_use_train_types_only():
    profiles = training_profiles(generated=50, classic=8, seed=0)
    assert profiles[0].steps == ()  # the clean camera first
    types = {step.shift_type for p in profiles for step in p.steps}
    assert types <= set(SHIFT_SPLIT["train"]) and len(types) >= 8


def _synthetic_devices(bundle, count: int, n: int, seed: int) -> DeviceSet:
    """Devices whose camera adds an offset and a gain to the embedding (label-free signal)."""
    g = torch.Generator().manual_seed(seed)
    d, c = bundle.config.embed_dim, bundle.config.num_classes
    head = bundle.model.fused_head
    centres = torch.linalg.pinv(head.weight.detach()).T * 3.0  # separable by the global head
    spread = float(centres.norm(dim=1).mean())
    zs, ys = [], []
    for _ in range(count):
        y = torch.arange(n) % c
        offset = torch.randn(d, generator=g) * spread
        z = centres[y] + 0.05 * spread * torch.randn(n, d, generator=g) + offset
        zs.append(z.float())
        ys.append(y)
    return DeviceSet([DeviceProfile((), i) for i in range(count)], torch.stack(zs), torch.stack(ys))


def test_device_hypernetwork_learns_to_undo_unseen_offsets():
    """A new device's offset is read from its window mean: H beats the global head on it."""
    torch.manual_seed(0)
    bundle = make_tiny_bundle()
    train = _synthetic_devices(bundle, 64, 48, seed=0)
    val = _synthetic_devices(bundle, 8, 48, seed=1)  # offsets never seen in training
    config = HyperNetworkTrainConfig(
        steps=400,
        batch_devices=16,
        window=32,
        alphas=(1.0,),
        eval_alpha=1.0,
        random_mask_fraction=0.0,
        global_penalty=0.0,
        correction="bias",
        lr=1e-2,
        threads=1,
    )
    model, metrics = fit_hypernetwork(config, bundle, train, val)
    assert not model.training
    assert metrics["val_accuracy_personalised"] > metrics["val_accuracy_global"] + 0.2
    # the reference the cloud sends with Θ: one window mean per training device
    assert model.familiarity is not None and model.familiarity.means.shape == (64, train.z.shape[2])
    assert model.familiarity.ratio(train.z[5].double().mean(0).numpy()) < 1e-5


def test_global_penalty_keeps_theta_at_the_global_head():
    bundle = make_tiny_bundle()
    train = _synthetic_devices(bundle, 16, 32, seed=0)
    config = HyperNetworkTrainConfig(
        steps=200, batch_devices=8, window=16, global_penalty=1e4, threads=1
    )
    model, _ = fit_hypernetwork(config, bundle, train)
    a, _ = model.affine_map()
    assert float(a.abs().max()) < 1e-3


def test_trainer_needs_a_base_model():
    assert TRAINER.needs_registry and TRAINER.name == "hypernetwork"
    with pytest.raises(ValueError, match="base_model_path"):
        TRAINER.train(HyperNetworkTrainConfig(), registry=None)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        HyperNetworkTrainConfig(alphas=(0.0,))


def test_every_device_gets_its_own_clips_and_labels():
    from server.training.device_embeddings import embed_devices
    from shared.data.digit_actions import DigitActionsConfig, generate_split

    bundle = make_tiny_bundle()
    clips = generate_split("test", DigitActionsConfig(test_per_class=2))
    profiles = training_profiles(generated=2, classic=1, seed=0)
    devices = embed_devices(bundle.model, clips, profiles, per_device=5, seed=0)
    assert devices.z.shape == (4, 5, bundle.config.embed_dim) and devices.y.shape == (4, 5)
    assert set(devices.y.flatten().tolist()) <= set(clips.labels.tolist())


def test_h_is_trained_on_and_records_the_embeddings_devices_send(monkeypatch):
    import server.training.hypernetwork as job
    from shared.embedding_adaptation import DEFAULT, PLAIN
    from shared.models.leantta import LeanTTANorm

    assert HyperNetworkTrainConfig().embedding == DEFAULT  # the product's kind
    bundle = make_tiny_bundle()
    models = []

    def embed(model, clips, profiles, per_device, **_):
        models.append(model)
        return _synthetic_devices(bundle, len(profiles), per_device, seed=0)

    monkeypatch.setattr(job, "embed_devices", embed)
    monkeypatch.setattr(job, "load_split", lambda split, data: None)
    for embedding, adapted in ((DEFAULT, True), (PLAIN, False)):
        models.clear()
        config = HyperNetworkTrainConfig(
            devices=4, classic_devices=1, clips_per_device=32, val_devices=2,
            val_clips_per_device=32, steps=5, window=16, threads=1, embedding=embedding,
        )  # fmt: skip
        train, val = job.collect_devices(config, bundle)
        assert len(models) == 2  # training and validation devices, embedded the same way
        for model in models:
            swapped = any(isinstance(m, LeanTTANorm) for m in model.modules())
            assert swapped == adapted and (model is bundle.model) != adapted
        hypernet, _ = fit_hypernetwork(config, bundle, train, val)
        assert hypernet.embedding == embedding
