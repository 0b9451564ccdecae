import numpy as np
import pytest
import torch

from shared.data.tensors import (
    FLOW_SCALE_PX,
    flow_to_tensor,
    frames_to_tensor,
    validate_clip,
    validate_flow,
)


def _clips(n=2, t=4, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, t, size, size, 3), dtype=np.uint8)


def test_frames_to_tensor_layout_and_range():
    clips = _clips()
    tensor = frames_to_tensor(clips)
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (2, 4, 3, 8, 8)
    n, t, y, x, c = 1, 2, 3, 5, 2
    assert tensor[n, t, c, y, x].item() == pytest.approx(clips[n, t, y, x, c] / 255.0)
    assert 0.0 <= tensor.min().item() and tensor.max().item() <= 1.0


def test_single_clip_gets_a_batch_axis():
    clip = _clips(n=1)[0]
    assert torch.equal(frames_to_tensor(clip), frames_to_tensor(clip[None]))


def test_flow_to_tensor_scales_by_documented_constant():
    flow = np.random.default_rng(1).normal(size=(3, 2, 8, 8)).astype(np.float32)
    tensor = flow_to_tensor(flow)
    assert tuple(tensor.shape) == (1, 3, 2, 8, 8)
    np.testing.assert_allclose(tensor[0].numpy(), flow / FLOW_SCALE_PX, rtol=1e-6)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((4, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((4, 8, 8), np.uint8), "shape"),
        (np.zeros((4, 8, 8, 4), np.uint8), "shape"),
        (np.zeros((1, 8, 8, 3), np.uint8), "at least 2 frames"),
    ],
)
def test_validate_clip_rejects_bad_frames(frames, message):
    with pytest.raises(ValueError, match=message):
        validate_clip(frames)


def test_validate_clip_reports_nan_and_type():
    with pytest.raises(ValueError, match="NaN"):
        validate_clip(np.full((4, 8, 8, 3), np.nan, np.float32))
    with pytest.raises(TypeError, match="numpy array"):
        validate_clip([[0]])


def test_validate_clip_checks_requested_length_and_size():
    clip = _clips(n=1)[0]
    assert validate_clip(clip, n_frames=4, size=8) is clip
    with pytest.raises(ValueError, match="expected 8 frames"):
        validate_clip(clip, n_frames=8)
    with pytest.raises(ValueError, match="32x32"):
        validate_clip(clip, size=32)


def test_validate_flow_rejects_nan_dtype_and_shape():
    good = np.zeros((3, 2, 8, 8), np.float32)
    bad = good.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        validate_flow(bad)
    with pytest.raises(ValueError, match="float32"):
        validate_flow(good.astype(np.float64))
    with pytest.raises(ValueError, match="shape"):
        validate_flow(np.zeros((3, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        flow_to_tensor(bad)
