"""Real video files (.mp4) in and out, through OpenCV.

Lets the device client read a video file exactly as it would read a camera, and lets the
digit-actions data be exported as ordinary .mp4 files. Frames are RGB uint8 throughout
(OpenCV's BGR order stays inside this module).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from shared.data.clipset import ClipSet
from shared.data.flow import compute_flow_batch
from shared.data.tensors import validate_clip

#: mp4v (MPEG-4 Part 2) ships with opencv-python wheels, so it works without extra codecs.
VIDEO_FOURCC = "mp4v"
#: Exported clips are upscaled by this factor (nearest neighbour): tiny 32x32 frames are
#: below what the codec handles well, and area-downscaling on import averages its noise out.
EXPORT_UPSCALE = 4
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


class VideoError(ValueError):
    """A video file that cannot be written, opened or decoded, or holds too few frames."""


def write_video(
    path: str | os.PathLike[str], frames: np.ndarray, fps: float = 8, upscale: int = 1
) -> Path:
    """Write RGB frames uint8 [F, H, W, 3] to an .mp4 file, optionally upscaled (nearest)."""
    validate_clip(frames)
    if frames.ndim != 4:
        raise ValueError(f"write_video takes frames [F, H, W, 3], got {tuple(frames.shape)}")
    if upscale < 1:
        raise ValueError(f"upscale must be a positive integer, got {upscale}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1] * upscale, frames.shape[2] * upscale
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), float(fps), (width, height)
    )
    if not writer.isOpened():
        raise VideoError(f"OpenCV could not open a {VIDEO_FOURCC} video writer for {path}")
    try:
        for frame in frames:
            if upscale > 1:
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_NEAREST)
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def _open(path: str | os.PathLike[str]) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"cannot open {path} as a video (unreadable or corrupt file)")
    return capture


def iter_frames(path: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """Decoded RGB frames uint8 [H, W, 3] of a video file, one at a time."""
    capture = _open(path)
    n_read = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            n_read += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    if n_read == 0:
        raise VideoError(f"{path} contains no decodable frames (empty or corrupt video)")


def read_video(path: str | os.PathLike[str]) -> np.ndarray:
    """All frames of a video file as RGB uint8 [F, H, W, 3], at the file's resolution."""
    return np.stack(list(iter_frames(path)))


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize frames uint8 [F, H, W, 3] to [F, size, size, 3] (area averaging when shrinking)."""
    if frames.shape[1:3] == (size, size):
        return frames
    shrinking = frames.shape[1] >= size and frames.shape[2] >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (size, size), interpolation=interpolation) for f in frames])


def iter_clips(
    path: str | os.PathLike[str], n_frames: int = 8, size: int = 32, stride: int | None = None
) -> Iterator[np.ndarray]:
    """Consecutive clips uint8 [n_frames, size, size, 3] of a video, streaming.

    A clip starts every ``stride`` frames (default ``n_frames``: no overlap); an incomplete
    tail is dropped. Raises VideoError if the video is shorter than one clip.
    """
    if n_frames < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    stride = n_frames if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    window: list[np.ndarray] = []
    since_last, n_clips, n_seen = stride, 0, 0  # first clip as soon as the window is full
    for frame in iter_frames(path):
        n_seen += 1
        window.append(resize_frames(frame[None], size)[0])
        window = window[-n_frames:]
        since_last += 1
        if len(window) == n_frames and since_last >= stride:
            since_last = 0
            n_clips += 1
            yield np.stack(window)
    if n_clips == 0:
        raise VideoError(f"{path} has {n_seen} frames, fewer than one clip of {n_frames}")


def export_clipset(
    clipset: ClipSet, folder: str | os.PathLike[str], fps: float = 8, upscale: int = EXPORT_UPSCALE
) -> Path:
    """Write each clip as ``clip_00000.mp4``... plus ``manifest.json`` (labels, actions, kind,
    frame size) into ``folder``. Returns the manifest path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, clip in enumerate(clipset.frames):
        name = f"clip_{i:05d}.mp4"
        write_video(folder / name, clip, fps=fps, upscale=upscale)
        entries.append(
            {"file": name, "label": int(clipset.labels[i]), "action": clipset.actions[i]}
        )
    n, t, h, _, _ = clipset.frames.shape
    manifest = {
        "version": MANIFEST_VERSION,
        "kind": clipset.kind,
        "n_frames": t,
        "size": h,
        "clips": entries,
    }
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=1))
    return path


def import_clips(folder: str | os.PathLike[str]) -> ClipSet:
    """Read a folder written by :func:`export_clipset` back into a ClipSet: frames resized to
    the recorded size, flow recomputed with compute_flow, order and labels preserved."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {folder} (not an exported clip folder)")
    manifest = json.loads(manifest_path.read_text())
    n_frames, size = int(manifest["n_frames"]), int(manifest["size"])
    clips = []
    for entry in manifest["clips"]:
        frames = read_video(folder / entry["file"])
        if len(frames) < n_frames:
            raise VideoError(
                f"{folder / entry['file']} has {len(frames)} frames, manifest says {n_frames}"
            )
        clips.append(resize_frames(frames[:n_frames], size))
    if clips:
        frames = np.stack(clips)
        flow = compute_flow_batch(frames)
    else:
        frames = np.zeros((0, n_frames, size, size, 3), np.uint8)
        flow = np.zeros((0, n_frames - 1, 2, size, size), np.float32)
    labels = np.array([e["label"] for e in manifest["clips"]], dtype=np.int64)
    actions = [e["action"] for e in manifest["clips"]]
    return ClipSet(frames, flow, labels, actions, manifest["kind"])
