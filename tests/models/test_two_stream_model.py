"""The two-stream model: shapes, input checks, heads, and the artifact round trip."""

from __future__ import annotations

import pytest
import torch

from shared.models.checkpoint import (
    ARTIFACT_FORMAT,
    bundle_from_bytes,
    bundle_to_bytes,
    load_bundle,
    save_bundle,
)
from shared.models.two_stream import TwoStreamConfig, TwoStreamNet


def _inputs(n: int = 2, t: int = 8, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(n, t, 3, size, size), torch.randn(n, t - 1, 2, size, size)


def test_forward_all_shapes_and_fused_head_consistency():
    model = TwoStreamNet(TwoStreamConfig(num_classes=6, embed_dim=16, widths=(4, 4, 4))).eval()
    rgb, flow = _inputs(3)
    out = model.forward_all(rgb, flow)
    assert out.z.shape == (3, 16)
    assert out.logits.shape == out.rgb_logits.shape == out.flow_logits.shape == (3, 6)
    # The fused head is a plain linear map of z: the HyperNetwork and detectors rely on it.
    expected = out.z @ model.fused_head.weight.T + model.fused_head.bias
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(model(rgb, flow), out.logits)
    # Embedding is post-ReLU (ReAct / ASH assume non-negative features).
    assert (out.z >= 0).all()


def test_embedding_halves_come_from_separate_streams():
    model = TwoStreamNet(TwoStreamConfig(embed_dim=8, widths=(4, 4, 4))).eval()
    rgb, flow = _inputs(2)
    z = model.embed(rgb, flow)
    z_other_flow = model.embed(rgb, flow + 5.0)
    torch.testing.assert_close(z[:, :4], z_other_flow[:, :4])  # RGB half ignores flow
    assert not torch.allclose(z[:, 4:], z_other_flow[:, 4:])


@pytest.mark.parametrize(
    ("rgb_shape", "flow_shape", "message"),
    [
        ((2, 8, 3, 32), (2, 7, 2, 32, 32), "rgb must be"),
        ((2, 7, 3, 32, 32), (2, 7, 2, 32, 32), "rgb must be"),
        ((2, 8, 3, 32, 32), (2, 8, 2, 32, 32), "flow must be"),
        ((2, 8, 3, 32, 32), (3, 7, 2, 32, 32), "2 clips but flow has 3"),
    ],
)
def test_wrong_shapes_raise_clear_errors(rgb_shape, flow_shape, message):
    model = TwoStreamNet(TwoStreamConfig(widths=(4, 4, 4)))
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(rgb_shape), torch.zeros(flow_shape))


@pytest.mark.parametrize(
    "kwargs", [{"num_classes": 1}, {"embed_dim": 7}, {"widths": (4, 0, 4)}, {"n_frames": 1}]
)
def test_invalid_config_rejected(kwargs):
    with pytest.raises(ValueError):
        TwoStreamConfig(**kwargs)


def test_artifact_round_trip_preserves_outputs(tmp_path, tiny_bundle):
    path = save_bundle(tiny_bundle, tmp_path / "m.pt")
    loaded = load_bundle(path)
    rgb, flow = _inputs(2)
    torch.testing.assert_close(loaded.model(rgb, flow), tiny_bundle.model(rgb, flow))
    assert loaded.classes == tiny_bundle.classes
    assert loaded.thresholds == pytest.approx(tiny_bundle.thresholds)
    torch.testing.assert_close(loaded.reference_features, tiny_bundle.reference_features)
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temp file


def test_corrupt_or_foreign_artifacts_rejected(tmp_path, tiny_bundle):
    data = bundle_to_bytes(tiny_bundle)
    with pytest.raises(ValueError, match="not a readable"):
        bundle_from_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="not a readable"):
        bundle_from_bytes(b"garbage" * 10)
    import io

    buffer = io.BytesIO()
    torch.save({"format": "something-else"}, buffer)
    with pytest.raises(ValueError, match=ARTIFACT_FORMAT):
        bundle_from_bytes(buffer.getvalue())
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_bundle(tmp_path / "missing.pt")
