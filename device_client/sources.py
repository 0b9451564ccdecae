"""Where the device's clips come from: a video file, a folder of videos, or a camera.

``--source`` syntax: ``FILE.mp4`` | ``DIR`` (every video file in it, sorted by name) |
``camera:N`` (OpenCV device N). Every source yields clips uint8 [n_frames, size, size, 3]
(frames area-resized to the model input). Files that are missing, empty, unreadable, too short
or whose frames are smaller than the model input raise a clear error before anything is scored;
a camera that stops delivering frames ends the stream, and :attr:`ClipSource.end_reason` says so.
A camera is opened by :meth:`ClipSource.check` (OpenCV's own warnings silenced), so a missing
camera is one clear error before any output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shared.data.video_io import VideoError, iter_frames, resize_frames

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")
CAMERA_PREFIX = "camera:"


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's log (e.g. V4L2 warnings for a missing camera); errors are ours to say."""
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


def _check_frame(frame: np.ndarray, size: int, where: str) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise VideoError(f"{where}: expected colour frames [H, W, 3], got {tuple(frame.shape)}")
    h, w = frame.shape[:2]
    if h < size or w < size:
        raise VideoError(
            f"{where}: frames are {w}x{h} pixels, smaller than the model input {size}x{size} "
            "(upscaling would invent detail; record at a higher resolution)"
        )


def clips_from_frames(
    frames: Iterator[np.ndarray], n_frames: int, size: int, where: str
) -> Iterator[np.ndarray]:
    """Group RGB frames [H, W, 3] into consecutive, non-overlapping clips [T, size, size, 3]."""
    window: list[np.ndarray] = []
    for frame in frames:
        _check_frame(frame, size, where)
        window.append(resize_frames(frame[None], size)[0])
        if len(window) == n_frames:
            yield np.stack(window)
            window = []


def _file_clips(path: Path, n_frames: int, size: int) -> Iterator[np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise VideoError(f"{path} is empty (0 bytes)")
    n_clips = 0
    for clip in clips_from_frames(iter_frames(path), n_frames, size, str(path)):
        n_clips += 1
        yield clip
    if n_clips == 0:
        raise VideoError(f"{path} holds fewer frames than one clip of {n_frames}")


def video_files(folder: Path) -> list[Path]:
    """The video files directly in ``folder``, sorted by name (ValueError when there is none)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise VideoError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in folder {folder}")
    return files


class ClipSource:
    """An iterable of clips from ``--source``; :meth:`check` validates files up front."""

    def __init__(
        self,
        spec: str | os.PathLike[str],
        n_frames: int,
        size: int,
        capture_factory: Callable[[int], Any] | None = None,
    ) -> None:
        self.spec = str(spec)
        self.n_frames = n_frames
        self.size = size
        self.capture_factory = capture_factory
        self.end_reason = "end of input"
        self.camera: int | None = None
        self._capture: Any = None
        self.files: list[Path] = []
        if self.spec.startswith(CAMERA_PREFIX):
            index = self.spec[len(CAMERA_PREFIX) :]
            if not index.isdigit():
                raise ValueError(f"camera source must be camera:N with N >= 0, got {self.spec!r}")
            self.camera = int(index)
        else:
            path = Path(self.spec)
            if path.is_dir():
                self.files = video_files(path)
            elif path.is_file():
                self.files = [path]
            else:
                raise FileNotFoundError(f"video file or folder not found: {path}")

    @property
    def is_camera(self) -> bool:
        return self.camera is not None

    def describe(self) -> str:
        if self.is_camera:
            return f"camera {self.camera}"
        return self.files[0].name if len(self.files) == 1 else f"{len(self.files)} video files"

    def check(self) -> None:
        """Open every file and check its first frame (or open the camera), so a bad source
        fails before anything is printed or scored."""
        if self.is_camera and self._capture is None:
            self._capture = self._open_camera()
        for path in self.files:
            if path.stat().st_size == 0:
                raise VideoError(f"{path} is empty (0 bytes)")
            first = next(iter_frames(path), None)
            if first is None:
                raise VideoError(f"{path} contains no decodable frames (empty or corrupt video)")
            _check_frame(first, self.size, str(path))

    def _camera_frames(self, capture: Any) -> Iterator[np.ndarray]:
        try:
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    self.end_reason = f"camera {self.camera} stopped delivering frames"
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()

    def _open_camera(self) -> Any:
        factory = self.capture_factory or cv2.VideoCapture  # looked up late: testable
        with _quiet_opencv():
            capture = factory(self.camera)
            opened = capture.isOpened()
        if not opened:
            capture.release()
            raise VideoError(
                f"camera {self.camera} could not be opened (no such camera, or it is busy)"
            )
        return capture

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.is_camera:
            capture, self._capture = self._capture or self._open_camera(), None
            where = f"camera {self.camera}"
            yield from clips_from_frames(
                self._camera_frames(capture), self.n_frames, self.size, where
            )
            return
        for path in self.files:
            yield from _file_clips(path, self.n_frames, self.size)
