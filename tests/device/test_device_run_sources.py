"""``secdood-device run --source FILE|DIR|camera:N``: clip sources, their errors, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support import make_tiny_bundle

import device_client.sources as sources
from device_client.cli import main
from device_client.sources import ClipSource
from server.export import int8_payload
from shared.data.video_io import VideoError, write_video
from shared.models.checkpoint import save_bundle
from shared.models.int8 import int8_payload_to_bytes


def _frames(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


class FakeCamera:
    """A cv2.VideoCapture stand-in that delivers ``n`` BGR frames and then fails."""

    def __init__(self, n: int, opened: bool = True) -> None:
        self.frames = list(_frames(n)[..., ::-1])
        self.opened = opened
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802  (OpenCV's name)
        return self.opened

    def read(self):
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def release(self) -> None:
        self.released = True


def test_file_source_yields_consecutive_clips(tmp_path):
    frames = _frames(20)
    path = write_video(tmp_path / "a.mp4", frames)
    clips = list(ClipSource(path, n_frames=8, size=16))
    assert len(clips) == 2 and clips[0].shape == (8, 16, 16, 3) and clips[0].dtype == np.uint8


def test_folder_source_reads_every_video_in_name_order(tmp_path):
    write_video(tmp_path / "b.mp4", _frames(8, seed=2))
    write_video(tmp_path / "a.mp4", _frames(16, seed=1))
    (tmp_path / "notes.txt").write_text("not a video")
    source = ClipSource(tmp_path, n_frames=8, size=32)
    assert [p.name for p in source.files] == ["a.mp4", "b.mp4"]
    source.check()
    assert len(list(source)) == 3


def test_file_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ClipSource(tmp_path / "missing.mp4", 8, 32)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        list(ClipSource(empty, 8, 32))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 40)
    with pytest.raises(VideoError, match="garbage.mp4"):
        ClipSource(garbage, 8, 32).check()
    small = write_video(tmp_path / "small.mp4", _frames(16, size=16))
    with pytest.raises(VideoError, match="smaller than the model input 32x32"):
        ClipSource(small, 8, 32).check()
    short = write_video(tmp_path / "short.mp4", _frames(5))
    with pytest.raises(VideoError, match="fewer frames than one clip"):
        list(ClipSource(short, 8, 32))
    folder = tmp_path / "nothing"
    folder.mkdir()
    with pytest.raises(VideoError, match="no video files"):
        ClipSource(folder, 8, 32)


def test_a_bad_file_in_a_folder_fails_before_scoring(tmp_path):
    write_video(tmp_path / "a.mp4", _frames(16))
    (tmp_path / "b.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="b.mp4 is empty"):
        ClipSource(tmp_path, 8, 32).check()


def test_camera_that_stops_ends_the_stream_cleanly():
    camera = FakeCamera(19)
    source = ClipSource("camera:0", 8, 32, capture_factory=lambda index: camera)
    assert source.is_camera and source.camera == 0
    clips = list(source)
    assert len(clips) == 2  # 19 frames: two full clips, the tail is dropped
    assert "stopped delivering frames" in source.end_reason and camera.released


def test_camera_errors():
    with pytest.raises(ValueError, match="camera:N"):
        ClipSource("camera:front", 8, 32)
    source = ClipSource("camera:3", 8, 32, capture_factory=lambda i: FakeCamera(0, opened=False))
    with pytest.raises(VideoError, match="camera 3 could not be opened"):
        list(source)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    bundle = make_tiny_bundle(1)
    rgb, flow = torch.rand(6, 8, 3, 32, 32), torch.randn(6, 7, 2, 32, 32) * 0.3
    float_path = save_bundle(bundle, folder / "float.pt")
    int8_path = folder / "int8.pt"
    int8_path.write_bytes(int8_payload_to_bytes(int8_payload(bundle, rgb, flow)))
    return float_path, int8_path


def test_cli_camera_run_ends_with_a_summary(model_files, monkeypatch, tmp_path, capsys):
    float_path, _ = model_files
    monkeypatch.setenv("SECDOOD_DEVICE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(sources.cv2, "VideoCapture", lambda index: FakeCamera(26))
    code = main(["run", "--source", "camera:0", "--model", str(float_path), "--adapt", "leantta"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 + 3 + 1  # header, 3 clips, summary
    assert lines[-1].startswith("summary: 3 clips")
    assert "camera 0 stopped delivering frames" in lines[-1]
    assert "clip" in captured.err  # the live progress line


def test_cli_int8_folder_run_and_errors(model_files, monkeypatch, tmp_path, capsys):
    float_path, int8_path = model_files
    monkeypatch.setenv("SECDOOD_DEVICE_DIR", str(tmp_path / "state"))
    videos = tmp_path / "videos"
    write_video(videos / "a.mp4", _frames(16))
    write_video(videos / "b.mp4", _frames(8, seed=3))
    argv = ["run", "--source", str(videos), "--model", str(int8_path), "--int8", "--quiet"]
    assert main([*argv, "--adapt", "zo"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("summary: 3 clips") and "adapt zo, int8" in out[-1]
    # --json names the quantised engine that ran (the arm64 smoke checks it is qnnpack)
    assert main([*argv, "--engine", "qnnpack", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["int8"] is True and report["engine"] == "qnnpack"
    assert main(["run", "--source", str(videos), "--model", str(float_path), "--int8"]) == 2
    assert "--variant int8" in capsys.readouterr().err
    small = write_video(tmp_path / "small.mp4", _frames(16, size=16))
    assert main(["run", "--source", str(small), "--model", str(float_path)]) == 2
    err = capsys.readouterr().err
    assert "smaller than the model input" in err and "Traceback" not in err
