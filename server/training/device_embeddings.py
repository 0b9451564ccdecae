"""Simulated devices for H: which cameras, and their embeddings under the frozen base model.

A device is a :class:`shared.data.device_shifts.DeviceProfile` (a composition of camera
shifts). Training devices are the clean camera, the classic severity-5 devices of
:func:`shared.data.corruptions.device_shift` (all of them use train-split types) and
hundreds drawn by the generator from the train split; validation devices come from the
validation split only. Embeddings are computed once and kept in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from server.training.base import ProgressFn, no_progress
from shared.data.clipset import ClipSet
from shared.data.corruptions import corrupt_clipset, device_shift
from shared.data.device_shifts import DeviceProfile, ShiftStep, draw_profile, shift_clipset
from shared.data.tensors import flow_to_tensor, frames_to_tensor
from shared.models.two_stream import TwoStreamNet


@torch.inference_mode()
def embed_clipset(model: TwoStreamNet, clips: ClipSet, batch_size: int = 256) -> torch.Tensor:
    """Fused embeddings z [N, D] of a clip set with the frozen base model."""
    model.eval()
    out = [
        model.embed(
            frames_to_tensor(clips.frames[start : start + batch_size]),
            flow_to_tensor(clips.flow[start : start + batch_size]),
        )
        for start in range(0, len(clips), batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, model.config.embed_dim)


def shifted_clips(clips: ClipSet, corruption: str, severity: int, seed: int) -> ClipSet:
    """The clips as a device with one classic corruption sees them ("" = clean)."""
    return clips if not corruption else corrupt_clipset(clips, corruption, severity, seed)


def classic_profile(index: int, seed: int = 0) -> DeviceProfile:
    """Classic device ``index`` (one corruption at severity 5) as a profile."""
    shift = device_shift(index, seed)
    return DeviceProfile((ShiftStep(shift.corruption, shift.severity),), camera_seed=index)


def training_profiles(generated: int, classic: int, seed: int) -> list[DeviceProfile]:
    """Clean, then ``classic`` classic devices, then ``generated`` generator draws (train)."""
    rng = np.random.default_rng([seed, 31337])
    return (
        [DeviceProfile((), 0)]
        + [classic_profile(i) for i in range(classic)]
        + [draw_profile("train", rng) for _ in range(generated)]
    )


@dataclass
class DeviceSet:
    """Per device: z [N, D] (float32) and labels y [N]; stacked, every device the same N."""

    profiles: list[DeviceProfile]
    z: torch.Tensor  # [M, N, D]
    y: torch.Tensor  # [M, N]


def embed_devices(
    model: TwoStreamNet,
    clips: ClipSet,
    profiles: Sequence[DeviceProfile],
    per_device: int,
    seed: int,
    progress: ProgressFn = no_progress,
    progress_span: tuple[float, float] = (0.0, 1.0),
) -> DeviceSet:
    """Each device sees its own random ``per_device`` clips of ``clips`` through its shift."""
    rng = np.random.default_rng([seed, 4099])
    zs, ys = [], []
    low, high = progress_span
    for index, profile in enumerate(profiles):
        if index % 10 == 0:
            progress(low + (high - low) * index / len(profiles), f"embedding device {index}")
        subset = clips.subset(rng.choice(len(clips), size=per_device, replace=False))
        zs.append(embed_clipset(model, shift_clipset(subset, profile, seed * 100003 + index)))
        ys.append(torch.as_tensor(subset.labels))
    return DeviceSet(list(profiles), torch.stack(zs), torch.stack(ys))
