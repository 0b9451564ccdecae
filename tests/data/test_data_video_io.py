import numpy as np
import pytest

from shared.data.digit_actions import DigitActionsConfig, generate_split
from shared.data.flow import compute_flow_batch
from shared.data.video_io import (
    VideoError,
    export_clipset,
    import_clips,
    iter_clips,
    read_video,
    write_video,
)

# mp4v is lossy. Exported at 4x (nearest) and area-downscaled on import, digit-actions clips
# come back with a mean absolute error of about 2-3 grey levels (measured: 2.3 mean, 2.8 worst
# clip of 30); 6 levels (2.4 %) leaves margin for codec builds yet is far below the actor's
# contrast to its background (> 60 levels), so the content is intact.
MAX_MEAN_ABS_ERROR = 6.0


def _colour_ramp(n_frames=20, size=32):
    """Frame f is a flat colour whose red channel encodes f, so frame order can be checked."""
    frames = np.zeros((n_frames, size, size, 3), np.uint8)
    frames[..., 0] = (np.arange(n_frames) * 12)[:, None, None]
    frames[..., 1] = 80
    return frames


def test_write_read_round_trip(tmp_path):
    frames = _colour_ramp()
    path = write_video(tmp_path / "ramp.mp4", frames, fps=8)
    back = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    # flat frames survive the codec almost exactly; check RGB order and frame order
    np.testing.assert_allclose(back[:, 16, 16].astype(float), frames[:, 16, 16], atol=6)


def test_upscaled_export_and_iter_clips_resizes(tmp_path):
    path = write_video(tmp_path / "ramp.mp4", _colour_ramp(), upscale=4)
    assert read_video(path).shape == (20, 128, 128, 3)
    clips = list(iter_clips(path, n_frames=8, size=32))
    assert len(clips) == 2 and clips[0].shape == (8, 32, 32, 3)  # 20 frames -> 2 full clips
    red = [int(round(c[0, 16, 16, 0] / 12)) for c in clips]
    assert red == [0, 8]
    overlapping = list(iter_clips(path, n_frames=8, size=16, stride=4))
    assert len(overlapping) == 4 and overlapping[1].shape == (8, 16, 16, 3)
    assert [int(round(c[0, 8, 8, 0] / 12)) for c in overlapping] == [0, 4, 8, 12]


def test_export_import_round_trip(tmp_path):
    clips = generate_split("test", DigitActionsConfig(test_per_class=2))
    export_clipset(clips, tmp_path / "export")
    back = import_clips(tmp_path / "export")
    assert back.frames.shape == clips.frames.shape
    assert back.labels.tolist() == clips.labels.tolist()
    assert back.actions == clips.actions and back.kind == clips.kind
    errors = np.abs(back.frames.astype(float) - clips.frames).mean(axis=(1, 2, 3, 4))
    assert errors.mean() < MAX_MEAN_ABS_ERROR
    # each imported clip is closest to its own original: order survived
    distance = np.abs(back.frames[:, None].astype(float) - clips.frames[None].astype(float)).mean(
        axis=(2, 3, 4, 5)
    )
    assert (distance.argmin(axis=1) == np.arange(len(clips))).all()
    np.testing.assert_array_equal(back.flow, compute_flow_batch(back.frames))


def test_missing_and_broken_files(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(missing)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(VideoError):
        read_video(garbage)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError):
        read_video(empty)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        import_clips(tmp_path)


def test_too_short_video_for_a_clip(tmp_path):
    path = write_video(tmp_path / "short.mp4", _colour_ramp(n_frames=5))
    with pytest.raises(VideoError, match="fewer than one clip"):
        list(iter_clips(path, n_frames=8))


def test_write_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="upscale"):
        write_video(tmp_path / "x.mp4", _colour_ramp(), upscale=0)
