import numpy as np
import pytest

from shared.data.corruptions import (
    CORRUPTIONS,
    DeviceShift,
    corrupt_clip,
    corrupt_clipset,
    device_shift,
)
from shared.data.digit_actions import DigitActionsConfig, generate_split
from shared.data.flow import compute_flow_batch

NOISES = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"}


@pytest.fixture(scope="module")
def clip():
    return generate_split("test", DigitActionsConfig(test_per_class=1)).frames[0]


def _mae(a, b):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_suite_size():
    assert len(CORRUPTIONS) >= 10 and len(set(CORRUPTIONS)) == len(CORRUPTIONS)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corruption_keeps_format_and_grows_with_severity(clip, corruption):
    distances = []
    for severity in (1, 5):
        out = corrupt_clip(clip, corruption, severity, np.random.default_rng(0))
        assert out.shape == clip.shape and out.dtype == np.uint8
        distances.append(_mae(out, clip))
    assert distances[0] > 0.5
    assert distances[1] > distances[0]


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_noise_changes_per_frame_optics_stay_constant(clip, corruption):
    static = np.repeat(clip[:1], 4, axis=0)  # four identical frames
    out = corrupt_clip(static, corruption, 3, np.random.default_rng(1))
    frames_differ = _mae(out[0], out[1]) > 0
    assert frames_differ == (corruption in NOISES)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_same_rng_seed_gives_same_result(clip, corruption):
    first = corrupt_clip(clip, corruption, 4, np.random.default_rng(7))
    second = corrupt_clip(clip, corruption, 4, np.random.default_rng(7))
    np.testing.assert_array_equal(first, second)


def test_gaussian_noise_has_the_documented_spread():
    grey = np.full((8, 32, 32, 3), 128, np.uint8)
    out = corrupt_clip(grey, "gaussian_noise", 1, np.random.default_rng(0))
    # severity 1: sigma = 0.06 on [0, 1]; no clipping happens around mid-grey
    assert np.std(out.astype(np.float64) / 255) == pytest.approx(0.06, rel=0.05)


def test_contrast_shrinks_deviation_from_the_mean(clip):
    out = corrupt_clip(clip, "contrast", 5, np.random.default_rng(0))
    assert np.std(out.astype(float)) < 0.2 * np.std(clip.astype(float))


def test_corrupt_clipset_recomputes_flow():
    clips = generate_split("val", DigitActionsConfig(val_per_class=1))
    noisy = corrupt_clipset(clips, "gaussian_noise", 5, seed=3)
    np.testing.assert_array_equal(noisy.flow, compute_flow_batch(noisy.frames))
    assert not np.array_equal(noisy.flow, clips.flow)
    assert noisy.labels.tolist() == clips.labels.tolist() and noisy.actions == clips.actions
    again = corrupt_clipset(clips, "gaussian_noise", 5, seed=3)
    np.testing.assert_array_equal(again.frames, noisy.frames)
    # different clips get different noise
    assert _mae(noisy.frames[0] - clips.frames[0], noisy.frames[1] - clips.frames[1]) > 0


def test_bad_corruption_arguments(clip):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="valid corruptions"):
        corrupt_clip(clip, "rain", 3, rng)
    for severity in (0, 6):
        with pytest.raises(ValueError, match="1..5"):
            corrupt_clip(clip, "fog", severity, rng)
    with pytest.raises(TypeError, match="int"):
        corrupt_clip(clip, "fog", 2.5, rng)
    with pytest.raises(ValueError, match="one clip"):
        corrupt_clip(clip[None], "fog", 2, rng)


def test_device_shift_is_distinct_and_deterministic():
    shifts = [device_shift(i) for i in range(len(CORRUPTIONS))]
    assert len({s.corruption for s in shifts}) == len(CORRUPTIONS)
    assert all(isinstance(s, DeviceShift) and 1 <= s.severity <= 5 for s in shifts)
    assert shifts == [device_shift(i) for i in range(len(CORRUPTIONS))]
    other_seed = [device_shift(i, seed=1).corruption for i in range(len(CORRUPTIONS))]
    assert other_seed != [s.corruption for s in shifts]
    with pytest.raises(ValueError, match=">= 0"):
        device_shift(-1)
