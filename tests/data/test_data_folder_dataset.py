import cv2
import numpy as np
import pytest

from shared.data.flow import compute_flow_batch
from shared.data.folder_dataset import load_clip_file, load_folder_dataset
from shared.data.video_io import VideoError, write_video


def _moving_square(direction, n_frames=12, size=64, colour=(230, 200, 40)):
    """A square moving 3 px/frame along ``direction`` (dx, dy) over a darker gradient."""
    ramp = np.linspace(20, 90, size, dtype=np.float32)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for t in range(n_frames):
        frame = np.stack([np.add.outer(ramp, ramp * 0.5)] * 3, axis=-1).clip(0, 255)
        x, y = 20 + direction[0] * 3 * t, 20 + direction[1] * 3 * t
        frame[y : y + 16, x : x + 16] = colour
        frames[t] = frame.astype(np.uint8)
    return frames


@pytest.fixture
def dataset(tmp_path):
    """root/{train,val,near_ood}/<class>/... with videos and frame folders, plus a split file."""
    root = tmp_path / "my_dataset"
    motions = {"walk": (1, 0), "fall": (0, 1)}
    for split, count in (("train", 2), ("test", 1)):
        for name, direction in motions.items():
            for i in range(count):
                write_video(root / split / name / f"clip{i}.mp4", _moving_square(direction))
    for name, direction in motions.items():  # val as frame folders
        folder = root / "val" / name / "clip0"
        folder.mkdir(parents=True)
        for t, frame in enumerate(_moving_square(direction, n_frames=10)):
            cv2.imwrite(str(folder / f"{t + 1:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    write_video(root / "near_ood" / "jump" / "a.mp4", _moving_square((0, -1)))
    (root / "splits").mkdir()
    (root / "splits" / "far_ood.txt").write_text(
        "train/walk/clip0.mp4 0\n\ntest/fall/clip0.mp4 1\n"
    )
    return root


def test_train_split_labels_and_class_names(dataset):
    clips, class_names = load_folder_dataset(dataset, "train", n_frames=8, size=32)
    assert class_names == ("fall", "walk")
    assert clips.frames.shape == (4, 8, 32, 32, 3) and clips.kind == "id"
    assert clips.labels.tolist() == [0, 0, 1, 1] and clips.actions == ["fall"] * 2 + ["walk"] * 2
    np.testing.assert_array_equal(clips.flow, compute_flow_batch(clips.frames))
    # walk moves right, fall moves down: visible in the mean flow of the moving pixels
    walk_flow, fall_flow = clips.flow[2], clips.flow[0]
    assert walk_flow[:, 0].sum() > 5 * abs(walk_flow[:, 1].sum())
    assert fall_flow[:, 1].sum() > 5 * abs(fall_flow[:, 0].sum())


def test_frame_folders_and_ood_splits(dataset):
    val, _ = load_folder_dataset(dataset, "val")
    assert len(val) == 2 and val.labels.tolist() == [0, 1]
    near, names = load_folder_dataset(dataset, "near")
    assert near.kind == "near" and near.labels.tolist() == [-1] and near.actions == ["jump"]
    assert names == ("fall", "walk")


def test_split_file_overrides_folders(dataset):
    far, _ = load_folder_dataset(dataset, "far_ood")
    assert far.kind == "far" and far.labels.tolist() == [-1, -1]
    assert far.actions == ["walk", "fall"]


def test_frames_are_sampled_evenly_over_the_clip(tmp_path):
    frames = np.zeros((15, 16, 16, 3), np.uint8)
    frames[..., 1] = (np.arange(15) * 16)[:, None, None]
    write_video(tmp_path / "ramp.mp4", frames)
    clip = load_clip_file(tmp_path / "ramp.mp4", n_frames=8, size=16)
    expected = np.linspace(0, 14, 8).round() * 16
    np.testing.assert_allclose(clip[:, 8, 8, 1], expected, atol=6)
    with pytest.raises(VideoError, match="at least 20"):
        load_clip_file(tmp_path / "ramp.mp4", n_frames=20)


def test_missing_paths_and_bad_names(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        load_folder_dataset(tmp_path / "no_such_root", "train")
    with pytest.raises(FileNotFoundError, match="far_ood|val"):
        load_folder_dataset(tmp_path, "val")
    with pytest.raises(ValueError, match="valid splits"):
        load_folder_dataset(dataset, "holdout")
    (dataset / "splits" / "test.txt").write_text("test/fall/clip0.mp4 zero\n")
    with pytest.raises(ValueError, match="integer label"):
        load_folder_dataset(dataset, "test")
