"""Validation of clip arrays and their conversion to model-ready torch tensors."""

from __future__ import annotations

import numpy as np
import torch

#: Flow is divided by this many pixels before it enters a model. Digit-actions motions stay
#: below ~4 px/frame, so scaled flow lies mostly in [-1, 1] (shakes and far-OOD may exceed it).
FLOW_SCALE_PX = 4.0


def validate_clip(
    frames: np.ndarray, n_frames: int | None = None, size: int | None = None
) -> np.ndarray:
    """Check one clip ``uint8 [T, H, W, 3]`` or a batch ``uint8 [N, T, H, W, 3]``.

    Returns ``frames`` unchanged so it can be used inline. ``n_frames`` / ``size`` (H = W),
    when given, must match. Raises TypeError for non-arrays and ValueError otherwise.
    """
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        has_nan = np.issubdtype(frames.dtype, np.floating) and bool(np.isnan(frames).any())
        hint = " (and it contains NaN)" if has_nan else ""
        raise ValueError(f"frames must have dtype uint8 (RGB 0..255), got {frames.dtype}{hint}")
    if frames.ndim not in (4, 5) or frames.shape[-1] != 3:
        raise ValueError(
            "frames must have shape [T, H, W, 3] or [N, T, H, W, 3] (RGB), "
            f"got {tuple(frames.shape)}"
        )
    t, h, w = frames.shape[-4:-1]
    if t < 2:
        raise ValueError(f"a clip needs at least 2 frames to have motion, got T = {t}")
    if h == 0 or w == 0:
        raise ValueError(f"frames must have non-empty height and width, got {h}x{w}")
    if n_frames is not None and t != n_frames:
        raise ValueError(f"expected {n_frames} frames per clip, got {t}")
    if size is not None and (h, w) != (size, size):
        raise ValueError(f"expected frames of {size}x{size} pixels, got {h}x{w}")
    return frames


def validate_flow(flow: np.ndarray) -> np.ndarray:
    """Check flow ``float32 [T-1, 2, H, W]`` or ``[N, T-1, 2, H, W]`` (finite values)."""
    if not isinstance(flow, np.ndarray):
        raise TypeError(f"flow must be a numpy array, got {type(flow).__name__}")
    if flow.dtype != np.float32:
        raise ValueError(f"flow must have dtype float32, got {flow.dtype}")
    if flow.ndim not in (4, 5) or flow.shape[-3] != 2:
        raise ValueError(
            f"flow must have shape [T-1, 2, H, W] or [N, T-1, 2, H, W], got {tuple(flow.shape)}"
        )
    if not np.isfinite(flow).all():
        raise ValueError("flow contains NaN or infinite values")
    return flow


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, T, H, W, 3]`` or ``[T, H, W, 3]`` -> float32 ``[N, T, 3, H, W]`` in [0, 1]."""
    validate_clip(frames)
    if frames.ndim == 4:
        frames = frames[None]
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 1, 4, 2, 3)
    return tensor.to(torch.float32).div_(255.0).contiguous()


def flow_to_tensor(flow: np.ndarray) -> torch.Tensor:
    """float32 ``[N, T-1, 2, H, W]`` or ``[T-1, 2, H, W]`` pixels -> float32
    ``[N, T-1, 2, H, W]`` divided by :data:`FLOW_SCALE_PX`."""
    validate_flow(flow)
    if flow.ndim == 4:
        flow = flow[None]
    return torch.from_numpy(np.ascontiguousarray(flow)).div(FLOW_SCALE_PX)
