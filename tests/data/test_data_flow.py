import cv2
import numpy as np
import pytest

from shared.data.flow import compute_flow, compute_flow_batch


def _texture(size=32, seed=0):
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 1.5)
    gray = (gray - gray.min()) / (gray.max() - gray.min())
    return np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=2)


def _shifting_clip(dx, dy, n_frames=5):
    """A texture rolled by (dx, dy) whole pixels per frame (wrap-around, so no edges appear)."""
    base = _texture()
    return np.stack([np.roll(base, (t * dy, t * dx), axis=(0, 1)) for t in range(n_frames)])


@pytest.mark.parametrize(("dx", "dy"), [(2, 0), (0, -2), (1, 2), (-3, 1)])
def test_flow_recovers_known_translation(dx, dy):
    flow = compute_flow(_shifting_clip(dx, dy))
    assert flow.shape == (4, 2, 32, 32) and flow.dtype == np.float32
    interior = flow[:, :, 8:24, 8:24]
    np.testing.assert_allclose(np.median(interior[:, 0]), dx, atol=0.2)
    np.testing.assert_allclose(np.median(interior[:, 1]), dy, atol=0.2)


def test_static_clip_has_no_flow():
    flow = compute_flow(_shifting_clip(0, 0))
    # Farnebäck leaves small spurious values (< 0.5 px) at the frame border only.
    assert np.abs(flow[:, :, 4:28, 4:28]).max() < 0.05
    assert np.abs(flow).mean() < 0.02


def test_batch_equals_per_clip_flow():
    clips = np.stack([_shifting_clip(1, 0), _shifting_clip(0, 2)])
    batch = compute_flow_batch(clips)
    assert batch.shape == (2, 4, 2, 32, 32)
    for i in range(2):
        np.testing.assert_array_equal(batch[i], compute_flow(clips[i]))


def test_flow_errors_are_clear():
    clip = _shifting_clip(1, 0)
    with pytest.raises(ValueError, match="compute_flow_batch"):
        compute_flow(clip[None])
    with pytest.raises(ValueError, match="batch"):
        compute_flow_batch(clip)
    with pytest.raises(ValueError, match="uint8"):
        compute_flow(clip.astype(np.float32))
    with pytest.raises(ValueError, match="NaN"):
        compute_flow(np.full(clip.shape, np.nan, np.float32))
    with pytest.raises(ValueError, match="at least 2 frames"):
        compute_flow(clip[:1])
