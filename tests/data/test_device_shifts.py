"""shared.data.device_shifts and the new shift families: split, generator, camera constancy."""

from __future__ import annotations

import numpy as np
import pytest

from shared.data.corruptions import (
    CORRUPTIONS,
    FAMILIES,
    FAMILY_OF,
    SHIFT_TYPES,
    corrupt_clip,
)
from shared.data.device_shifts import (
    HELD_OUT_FAMILIES,
    SHIFT_SPLIT,
    DeviceProfile,
    ShiftStep,
    draw_profile,
    evaluation_profiles,
    hard_evaluation_profiles,
    shift_clip,
    split_of,
)
from shared.data.digit_actions import DigitActionsConfig, generate_split

NEW_TYPES = [t for t in SHIFT_TYPES if t not in CORRUPTIONS]
TEMPORAL_REORDERING = {"frame_drop", "frame_stutter", "frame_jitter"}


@pytest.fixture(scope="module")
def clip():
    return generate_split("test", DigitActionsConfig(test_per_class=1)).frames[0]


def _mae(a, b):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_split_is_disjoint_complete_and_holds_out_whole_families():
    train, val, test = (set(SHIFT_SPLIT[s]) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(SHIFT_TYPES)
    for split, families in HELD_OUT_FAMILIES.items():
        for family in families:
            members = {fn.__name__ for fn in FAMILIES[family]}
            assert members <= set(SHIFT_SPLIT[split])  # the whole family, in one split
    # issue 10: at least one noise, blur, lighting and digital type is held out for testing
    assert {"noise", "blur", "lighting", "digital"} <= {FAMILY_OF[t] for t in test}
    assert {FAMILY_OF[t] for t in train} >= {"noise", "blur", "lighting", "temporal"}
    assert split_of("occlusion") == "test" and split_of("rotation") == "val"
    assert {fn.__name__ for fn in FAMILIES["overlay"]} <= set(val)  # the second val family
    with pytest.raises(ValueError, match="unknown shift type"):
        split_of("rain")


@pytest.mark.parametrize("shift_type", NEW_TYPES)
def test_new_types_keep_format_change_the_clip_and_are_seeded(clip, shift_type):
    out = {
        severity: corrupt_clip(clip, shift_type, severity, np.random.default_rng(3))
        for severity in (1, 5)
    }
    for frames in out.values():
        assert frames.shape == clip.shape and frames.dtype == np.uint8
    again = corrupt_clip(clip, shift_type, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(out[5], again)
    assert _mae(out[5], clip) > 0.5
    if shift_type not in TEMPORAL_REORDERING:  # reorderings are random, not monotone per clip
        assert _mae(out[5], clip) > _mae(out[1], clip)


@pytest.mark.parametrize("shift_type", sorted(TEMPORAL_REORDERING))
def test_frame_timing_shifts_only_reuse_existing_frames(clip, shift_type):
    out = corrupt_clip(clip, shift_type, 5, np.random.default_rng(0))
    originals = {f.tobytes() for f in clip}
    assert all(frame.tobytes() in originals for frame in out)


def test_camera_properties_stay_fixed_on_one_device(clip):
    profile = DeviceProfile((ShiftStep("occlusion", 4), ShiftStep("rotation", 3)), camera_seed=11)
    first = shift_clip(clip, profile, np.random.default_rng(0))
    second = shift_clip(clip, profile, np.random.default_rng(1))  # another clip's randomness
    np.testing.assert_array_equal(first, second)  # no per-clip noise in these two types
    other_camera = DeviceProfile(profile.steps, camera_seed=12)
    assert _mae(shift_clip(clip, other_camera, np.random.default_rng(0)), first) > 1.0


def test_overlays_stay_on_the_device_and_the_caption_runs_frame_to_frame(clip):
    fence = DeviceProfile((ShiftStep("fence", 3),), camera_seed=4)
    np.testing.assert_array_equal(
        shift_clip(clip, fence, np.random.default_rng(0)),
        shift_clip(clip, fence, np.random.default_rng(1)),
    )
    blank = np.zeros_like(clip)  # only the caption's text is drawn on it
    text = corrupt_clip(blank, "caption", 1, np.random.default_rng(0))
    assert text.max() > 200  # white (anti-aliased) letters
    assert any(_mae(text[t], text[t + 1]) > 0 for t in range(len(text) - 1))  # seconds tick
    assert _mae(text[0], corrupt_clip(blank, "caption", 1, np.random.default_rng(9))[0]) > 0


def test_generator_draws_from_its_split_only_and_is_deterministic():
    draws = [draw_profile("train", np.random.default_rng([5, i])) for i in range(200)]
    assert all(s.shift_type in SHIFT_SPLIT["train"] for p in draws for s in p.steps)
    assert {len(p.steps) for p in draws} == {1, 2, 3}
    assert {s.severity for p in draws for s in p.steps} == {1, 2, 3, 4, 5}
    assert draws[0] == draw_profile("train", np.random.default_rng([5, 0]))
    assert len({p.name for p in draws}) > 150  # diverse, not a fixed list
    with pytest.raises(ValueError, match="split"):
        draw_profile("holdout", np.random.default_rng(0))


def test_evaluation_devices_cover_the_test_types_then_mix_them():
    profiles = evaluation_profiles("test", len(SHIFT_SPLIT["test"]) + 4, seed=0)
    singles = [p for p in profiles if len(p.steps) == 1]
    assert {p.steps[0].shift_type for p in singles} == set(SHIFT_SPLIT["test"])
    assert all(len(p.steps) == 2 for p in profiles[len(singles) :])
    assert all(3 <= s.severity <= 5 for p in profiles for s in p.steps)
    assert all(s.shift_type in SHIFT_SPLIT["test"] for p in profiles for s in p.steps)


def test_hard_population_is_compositions_at_high_severity_from_its_split():
    profiles = hard_evaluation_profiles("test", 8, seed=0)
    assert len(profiles) == 8
    assert all(2 <= len(p.steps) <= 3 for p in profiles)
    assert all(4 <= s.severity <= 5 for p in profiles for s in p.steps)
    assert all(s.shift_type in SHIFT_SPLIT["test"] for p in profiles for s in p.steps)
    assert profiles == hard_evaluation_profiles("test", 8, seed=0)
    assert profiles != hard_evaluation_profiles("test", 8, seed=1)
