"""Dense optical flow of a clip — the one function cloud (training) and device (run time) share.

OpenCV Farnebäck flow between consecutive grayscale frames. Parameters are tuned for
32x32 frames with motions of up to ~4 px/frame:

- ``pyr_scale=0.5, levels=2``: a 2-level pyramid (32 -> 16 px) doubles the reachable
  displacement without shrinking a level below the polynomial window;
- ``winsize=9``: averaging window big enough to be robust on textured backgrounds, small
  enough (~1/4 of the frame) to keep the moving actor separate from the static background;
- ``iterations=3, poly_n=5, poly_sigma=1.1``: OpenCV's recommended pair for small
  neighbourhoods;
- ``flags=0``: plain box averaging (Gaussian weighting gave no gain at this size).
"""

from __future__ import annotations

import cv2
import numpy as np

from shared.data.tensors import validate_clip

FARNEBACK_PARAMS: dict[str, float | int] = {
    "pyr_scale": 0.5,
    "levels": 2,
    "winsize": 9,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.1,
    "flags": 0,
}


def compute_flow(frames: np.ndarray) -> np.ndarray:
    """Flow of one clip: uint8 RGB ``[T, H, W, 3]`` -> float32 ``[T-1, 2, H, W]``.

    Channel 0 is dx (pixels, positive = rightwards), channel 1 is dy (positive = downwards);
    entry ``t`` is the motion from frame ``t`` to frame ``t + 1``.
    """
    validate_clip(frames)
    if frames.ndim != 4:
        raise ValueError(
            f"compute_flow takes one clip [T, H, W, 3]; got {tuple(frames.shape)} "
            "(use compute_flow_batch for [N, T, H, W, 3])"
        )
    gray = [cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY) for frame in frames]
    n_steps, height, width = len(gray) - 1, frames.shape[1], frames.shape[2]
    flow = np.empty((n_steps, 2, height, width), dtype=np.float32)
    for t in range(n_steps):
        pair_flow = cv2.calcOpticalFlowFarneback(
            gray[t],
            gray[t + 1],
            None,
            FARNEBACK_PARAMS["pyr_scale"],
            FARNEBACK_PARAMS["levels"],
            FARNEBACK_PARAMS["winsize"],
            FARNEBACK_PARAMS["iterations"],
            FARNEBACK_PARAMS["poly_n"],
            FARNEBACK_PARAMS["poly_sigma"],
            FARNEBACK_PARAMS["flags"],
        )
        flow[t] = pair_flow.transpose(2, 0, 1)
    return flow


def compute_flow_batch(clips: np.ndarray) -> np.ndarray:
    """Flow of a batch: uint8 ``[N, T, H, W, 3]`` -> float32 ``[N, T-1, 2, H, W]``."""
    validate_clip(clips)
    if clips.ndim != 5:
        raise ValueError(
            f"compute_flow_batch takes a batch [N, T, H, W, 3]; got {tuple(clips.shape)}"
        )
    n, t, h, w, _ = clips.shape
    flow = np.empty((n, t - 1, 2, h, w), dtype=np.float32)
    for i, clip in enumerate(clips):
        flow[i] = compute_flow(clip)
    return flow
