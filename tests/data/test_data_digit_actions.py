import numpy as np
import pytest

from shared.data import actions
from shared.data.actions import (
    ID_ACTIONS,
    NEAR_HARD_ACTIONS,
    NEAR_OOD_ACTIONS,
    ActionParams,
    action_placements,
)
from shared.data.clipset import ClipSet
from shared.data.digit_actions import (
    DigitActionsConfig,
    actor_pools,
    cache_path,
    generate_split,
    load_split,
    render_clip,
)
from shared.data.flow import compute_flow, compute_flow_batch

SMALL = DigitActionsConfig(
    train_per_class=4, val_per_class=2, test_per_class=3, ood_per_action=2, far_count=6
)


@pytest.fixture(scope="module")
def splits():
    names = ("train", "val", "test", "near", "far", "near_hard", "near_hard_val")
    return {s: generate_split(s, SMALL) for s in names}


def test_shapes_dtypes_and_labels(splits):
    train = splits["train"]
    assert train.frames.shape == (24, 8, 32, 32, 3) and train.frames.dtype == np.uint8
    assert train.flow.shape == (24, 7, 2, 32, 32) and train.flow.dtype == np.float32
    assert train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == [4] * 6
    assert all(ID_ACTIONS[label] == a for label, a in zip(train.labels, train.actions, strict=True))
    assert train.kind == "id" and len(splits["val"]) == 12 and len(splits["test"]) == 18
    near, far = splits["near"], splits["far"]
    assert near.kind == "near" and far.kind == "far"
    assert (near.labels == -1).all() and (far.labels == -1).all()
    assert sorted(set(near.actions)) == sorted(NEAR_OOD_ACTIONS)
    assert {a.split(":")[0] for a in far.actions} == {
        "photo_actor",
        "photo_background",
        "random_motion",
    }


def test_near_hard_splits_hold_only_near_hard_actions(splits):
    for split in ("near_hard", "near_hard_val"):
        hard = splits[split]
        assert hard.kind == "near" and (hard.labels == -1).all()
        assert len(hard) == SMALL.ood_per_action * len(NEAR_HARD_ACTIONS)
        assert sorted(set(hard.actions)) == sorted(NEAR_HARD_ACTIONS)
        assert not set(hard.actions) & (set(ID_ACTIONS) | set(NEAR_OOD_ACTIONS))
        np.testing.assert_array_equal(hard.flow, compute_flow_batch(hard.frames))
    # Same actions, different actor pools (test vs val): the clips differ.
    assert not np.array_equal(splits["near_hard"].frames, splits["near_hard_val"].frames)


def test_near_hard_generation_is_deterministic(splits):
    again = generate_split("near_hard", SMALL)
    np.testing.assert_array_equal(again.frames, splits["near_hard"].frames)
    assert again.actions == splits["near_hard"].actions


def test_retuning_near_hard_changes_only_its_cache_key(tmp_path, monkeypatch):
    """The earlier splits keep their cache keys (no version bump, no recipe in their key)."""
    hard_before = cache_path("near_hard", SMALL, tmp_path)
    near_before = cache_path("near", SMALL, tmp_path)
    assert hard_before != near_before
    monkeypatch.setattr(actions, "SLOW_FACTOR", actions.SLOW_FACTOR + 0.1)
    assert cache_path("near_hard", SMALL, tmp_path) != hard_before  # retuned: a new cache file
    assert cache_path("near", SMALL, tmp_path) == near_before


def test_flow_is_computed_from_the_frames(splits):
    for split in ("test", "far"):
        np.testing.assert_array_equal(splits[split].flow, compute_flow_batch(splits[split].frames))


def test_generation_is_deterministic_and_seeded(splits):
    again = generate_split("test", SMALL)
    np.testing.assert_array_equal(again.frames, splits["test"].frames)
    np.testing.assert_array_equal(again.flow, splits["test"].flow)
    other_seed = generate_split("test", DigitActionsConfig(**{**SMALL.__dict__, "seed": 1}))
    assert not np.array_equal(other_seed.frames, splits["test"].frames)


def test_actor_pools_are_disjoint():
    pools = actor_pools(0)
    train, val, test = (set(pools[k].tolist()) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == 1797


def test_rendered_motion_is_visible_in_flow():
    """Render each ID action on a flat background and check its flow's direction."""
    size = 32
    background = np.full((size, size, 3), 0.2, np.float32)
    yy, xx = np.mgrid[0:14, 0:14]
    alpha = (((yy - 6) ** 2 + (xx - 8) ** 2 < 30) & (xx > 3)).astype(np.float32)
    colour = np.ones((14, 14, 3), np.float32)
    params = ActionParams(speed=1.0)
    grid_y, grid_x = np.mgrid[0:size, 0:size] - (size - 1) / 2

    def stats(action):
        clip = render_clip(background, colour, alpha, action_placements(action, 8, params))
        flow = compute_flow(clip)
        moving = np.hypot(flow[:, 0], flow[:, 1]) > 0.3
        dx, dy = flow[:, 0][moving], flow[:, 1][moving]
        gx, gy = (
            np.broadcast_to(grid_x, moving.shape)[moving],
            np.broadcast_to(grid_y, moving.shape)[moving],
        )
        return dx.mean(), dy.mean(), (dx * gx + dy * gy).mean(), (dy * gx - dx * gy).mean()

    assert stats("translate_right")[0] > 1.0
    assert stats("translate_left")[0] < -1.0
    assert stats("translate_up")[1] < -1.0
    assert stats("translate_down")[1] > 1.0
    assert stats("zoom_in")[2] > 0 > stats("zoom_out")[2]
    # clockwise on screen with y down: positive curl (dy/dx - dx/dy) sum
    assert stats("rotate_cw")[3] > 0 > stats("rotate_ccw")[3]


def test_load_split_caches_on_disk(tmp_path, splits):
    first = load_split("val", SMALL, cache_dir=tmp_path)
    path = cache_path("val", SMALL, tmp_path)
    assert path.is_file()
    np.testing.assert_array_equal(first.frames, splits["val"].frames)
    cached = load_split("val", SMALL, cache_dir=tmp_path)
    np.testing.assert_array_equal(cached.flow, splits["val"].flow)
    assert cached.actions == splits["val"].actions
    other = DigitActionsConfig(**{**SMALL.__dict__, "val_per_class": 1})
    assert cache_path("val", other, tmp_path) != path


def test_corrupt_cache_file_is_regenerated(tmp_path, splits):
    path = cache_path("val", SMALL, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK\x03\x04 truncated")
    clips = load_split("val", SMALL, cache_dir=tmp_path)
    np.testing.assert_array_equal(clips.frames, splits["val"].frames)
    np.testing.assert_array_equal(load_split("val", SMALL, cache_dir=tmp_path).frames, clips.frames)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SECDOOD_CACHE_DIR", str(tmp_path / "env-cache"))
    load_split("near", SMALL)
    assert cache_path("near", SMALL).parent == tmp_path / "env-cache"
    assert cache_path("near", SMALL).is_file()


def test_unknown_split_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="train, val, test, near, far, near_hard, near_hard_val"):
        load_split("holdout", SMALL, cache_dir=tmp_path)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="n_frames"):
        DigitActionsConfig(n_frames=1)
    with pytest.raises(ValueError, match="size"):
        DigitActionsConfig(size=8)
    with pytest.raises(ValueError, match="train_per_class"):
        DigitActionsConfig(train_per_class=-1)


def test_other_frame_sizes_and_lengths():
    config = DigitActionsConfig(n_frames=5, size=48, test_per_class=1)
    test = generate_split("test", config)
    assert test.frames.shape == (6, 5, 48, 48, 3) and test.flow.shape == (6, 4, 2, 48, 48)


def test_clipset_subset_save_load(tmp_path, splits):
    train = splits["train"]
    part = train.subset([5, 0, 7])
    assert len(part) == 3 and part.actions == [train.actions[i] for i in (5, 0, 7)]
    np.testing.assert_array_equal(part.frames[1], train.frames[0])
    masked = train.subset(train.labels == 2)
    assert len(masked) == 4 and (masked.labels == 2).all()
    part.save(tmp_path / "part.npz")
    loaded = ClipSet.load(tmp_path / "part.npz")
    np.testing.assert_array_equal(loaded.flow, part.flow)
    assert loaded.labels.tolist() == part.labels.tolist() and loaded.kind == "id"
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        ClipSet.load(tmp_path / "missing.npz")


def test_clipset_rejects_inconsistent_arrays(splits):
    test = splits["test"]
    with pytest.raises(ValueError, match="flow shape"):
        ClipSet(test.frames, test.flow[:-1], test.labels, test.actions)
    with pytest.raises(ValueError, match="labels"):
        ClipSet(test.frames, test.flow, test.labels[:-1], test.actions)
    with pytest.raises(ValueError, match="one action name"):
        ClipSet(test.frames, test.flow, test.labels, test.actions[:-1])
    with pytest.raises(ValueError, match="kind"):
        ClipSet(test.frames, test.flow, test.labels, test.actions, kind="weird")
