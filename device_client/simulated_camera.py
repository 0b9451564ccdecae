"""A simulated camera: digit-actions clips seen through one device's corruption, as an .mp4.

Used by ``secdood-device simulate-camera``, the demo and the Docker Compose
devices, so a device can be pointed at a real video file exactly as in
production. The ground truth (per clip: label, action, ID/near/far) is written
next to the video as ``<name>.truth.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shared.data.corruptions import corrupt_clipset
from shared.data.digit_actions import DigitActionsConfig, load_split
from shared.data.video_io import write_video


def simulated_stream(
    n_clips: int,
    corruption: str | None = None,
    severity: int = 0,
    ood_fraction: float = 0.3,
    seed: int = 0,
) -> tuple[np.ndarray, list[dict]]:
    """Shuffled test clips, a fraction near/far-OOD, through the camera shift.

    Returns frames uint8 [N, T, H, W, 3] and one ground-truth dict per clip
    (``label`` — class index or -1 —, ``action``, ``kind``).
    """
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    if not 0.0 <= ood_fraction <= 1.0:
        raise ValueError(f"ood_fraction must be in [0, 1], got {ood_fraction}")
    rng = np.random.default_rng(seed)
    config = DigitActionsConfig()
    n_ood = int(round(n_clips * ood_fraction))
    n_near = n_ood // 2
    frames, truth = [], []
    for split, count in (("test", n_clips - n_ood), ("near", n_near), ("far", n_ood - n_near)):
        if count == 0:
            continue
        clips = load_split(split, config)
        part = clips.subset(np.sort(rng.choice(len(clips), size=count, replace=False)))
        if corruption:
            part = corrupt_clipset(part, corruption, severity, seed=seed)
        frames.append(part.frames)
        truth += [
            {"label": int(label), "action": action, "kind": part.kind}
            for label, action in zip(part.labels, part.actions, strict=True)
        ]
    order = rng.permutation(n_clips)
    return np.concatenate(frames)[order], [truth[i] for i in order]


def truth_path(video: str | Path) -> Path:
    """Where the ground truth of a simulated camera video is kept."""
    return Path(video).with_suffix(".truth.json")


def load_truth(video: str | Path) -> list[int] | None:
    """Per-clip labels (class index, or -1 for OOD) of a simulated video; None without truth."""
    path = truth_path(video)
    if not path.is_file():
        return None
    try:
        return [int(clip["label"]) for clip in json.loads(path.read_text())["clips"]]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is damaged ({error!r}); write it again") from None


def write_simulated_camera(
    out: str | Path,
    n_clips: int = 24,
    corruption: str | None = None,
    severity: int = 0,
    ood_fraction: float = 0.3,
    seed: int = 0,
    fps: float = 8.0,
) -> Path:
    """Write the stream as one continuous video plus its ground truth; returns the video path."""
    out = Path(out)
    frames, clips = simulated_stream(n_clips, corruption, severity, ood_fraction, seed)
    n, t, h, w, c = frames.shape
    write_video(out, frames.reshape(n * t, h, w, c), fps=fps)
    truth = {"n_frames": t, "corruption": corruption, "severity": severity, "clips": clips}
    truth_path(out).write_text(json.dumps(truth, indent=1))
    return out
