"""device_client.runtime: loading float / int8 artifacts for each adaptation mode, ZO online."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import make_tiny_bundle

from device_client.runtime import (
    DeviceRuntime,
    OnlineZOAdapter,
    ZOStreamConfig,
    adaptable_batchnorms,
    adapted_names,
    load_model,
)
from server.export import int8_payload
from shared.models.checkpoint import bundle_to_bytes
from shared.models.int8 import int8_payload_to_bytes
from shared.models.leantta import LeanTTANorm, apply_leantta


@pytest.fixture(scope="module")
def artifacts():
    bundle = make_tiny_bundle(3)
    gen = torch.Generator().manual_seed(0)
    rgb, flow = torch.rand(8, 8, 3, 32, 32, generator=gen), torch.randn(8, 7, 2, 32, 32) * 0.3
    return bundle, bundle_to_bytes(bundle), int8_payload_to_bytes(int8_payload(bundle, rgb, flow))


def test_adapted_names_cover_both_streams():
    assert adapted_names(2) == [
        "rgb_encoder.features.1",
        "rgb_encoder.features.4",
        "flow_encoder.features.1",
        "flow_encoder.features.4",
    ]
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        adapted_names(4)
    with pytest.raises(TypeError):
        adapted_names("1")


def test_float_leantta_equals_unfolded_leantta(artifacts):
    bundle, float_bytes, _ = artifacts
    names = adapted_names(2)
    reference = apply_leantta(bundle.model, names=names)  # nothing folded
    prepared = load_model(float_bytes, "leantta", adapt_layers=2).model
    assert sum(isinstance(m, LeanTTANorm) for m in prepared.modules()) == 4
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in prepared.modules())
    rgb, flow = torch.rand(3, 8, 3, 32, 32), torch.randn(3, 7, 2, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(prepared(rgb, flow), reference(rgb, flow), atol=1e-5)


def test_none_keeps_the_float_model_unchanged(artifacts):
    bundle, float_bytes, _ = artifacts
    model = load_model(float_bytes).model
    rgb, flow = torch.rand(2, 8, 3, 32, 32), torch.randn(2, 7, 2, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(rgb, flow), bundle.model(rgb, flow))


def test_load_errors(artifacts, tmp_path):
    _bundle, float_bytes, int8_bytes = artifacts
    with pytest.raises(ValueError, match="--variant int8"):
        load_model(float_bytes, int8=True)
    with pytest.raises(ValueError, match="--variant float"):
        load_model(int8_bytes, int8=False)
    with pytest.raises(ValueError, match="adapt must be one of"):
        load_model(float_bytes, "tent")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="not a readable"):
        load_model(b"junk")


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_zo_mode_adapts_bn_affine_with_forward_passes_only(artifacts, kind):
    _bundle, float_bytes, int8_bytes = artifacts
    data = float_bytes if kind == "float" else int8_bytes
    model = load_model(data, "zo", adapt_layers=1).model
    layers = adaptable_batchnorms(model)
    assert len(layers) == 2  # first conv BN of each stream, unfused
    config = ZOStreamConfig(window=4, every=4, steps=2, n_directions=1, lr=0.05)
    adapter = OnlineZOAdapter(model, config)
    before = adapter.params.get()
    assert before.numel() == 2 * sum(bn.num_features for bn in layers)
    rgb, flow = torch.rand(4, 8, 3, 32, 32), torch.randn(4, 7, 2, 32, 32)
    adapter.observe(rgb[:3], flow[:3])
    assert adapter.rounds == 0 and torch.equal(adapter.params.get(), before)
    adapter.observe(rgb[3:], flow[3:])
    assert adapter.rounds == 1 and adapter.forward_passes == 2 * 2
    after = adapter.params.get()
    assert not torch.equal(after, before)
    assert all(not p.requires_grad for p in model.parameters())  # no backprop anywhere
    with pytest.raises(ValueError, match="adapt_layers >= 1"):
        OnlineZOAdapter(load_model(data, "zo", adapt_layers=0).model)


@pytest.mark.parametrize("eval_batch", [1, 3, 8])
def test_zo_window_entropy_is_the_same_for_any_eval_batch(artifacts, eval_batch):
    """Chunked loss evaluation (memory bound) = the mean entropy of the whole window at once."""
    _bundle, float_bytes, _ = artifacts
    model = load_model(float_bytes, "zo", adapt_layers=2).model
    config = ZOStreamConfig(window=5, eval_batch=eval_batch, every=100)
    adapter = OnlineZOAdapter(model, config)
    gen = torch.Generator().manual_seed(1)
    rgb, flow = torch.rand(7, 8, 3, 32, 32, generator=gen), torch.randn(7, 7, 2, 32, 32)
    adapter.observe(rgb, flow)  # the window keeps the last 5 clips
    theta = adapter.theta + 0.1 * torch.randn(adapter.theta.shape, generator=gen)
    value = adapter.window_entropy(theta)
    with torch.inference_mode():
        logits = model(rgb[2:], flow[2:])  # params already set to theta by window_entropy
    probs = torch.softmax(logits.double(), dim=1)
    expected = float(-(probs * probs.log()).sum(dim=1).mean())
    assert value == pytest.approx(expected, rel=1e-5)


def test_zo_config_rejects_bad_values():
    with pytest.raises(ValueError, match="window"):
        ZOStreamConfig(window=0)
    with pytest.raises(ValueError, match="eval_batch"):
        ZOStreamConfig(eval_batch=0)
    with pytest.raises(ValueError, match="positive"):
        ZOStreamConfig(lr=0.0)


@pytest.mark.parametrize("adapt", ["none", "leantta", "zo"])
def test_runtime_scores_clips(artifacts, adapt):
    _bundle, _float_bytes, int8_bytes = artifacts
    runtime = DeviceRuntime.from_artifact(int8_bytes, adapt=adapt, int8=True)
    frames = np.random.default_rng(0).integers(0, 255, (3, 8, 32, 32, 3), dtype=np.uint8)
    verdicts = runtime.score_clips(frames)
    assert runtime.is_int8
    assert len(verdicts.labels) == 3 and verdicts.ood_score.shape == (3,)
    assert torch.isfinite(verdicts.ood_score).all()
