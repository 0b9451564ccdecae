"""Simulated devices: the train / validation / test split of camera shifts and a generator.

**The split** (:data:`SHIFT_SPLIT`, the one place every benchmark takes it from). Whole
families are held out — ``geometric`` and ``overlay`` for validation, ``visibility`` for
testing — and within the per-pixel families some types are held out too (at least one
noise, blur, lighting and digital type for testing), so validation and test share no type
with training or with each other:

=========  ====================================================================
train      noise: gaussian, impulse, speckle; blur: defocus, motion;
           lighting: contrast, fog, colour cast; temporal: all five
validation digital: pixelate; geometric: all five; overlay: all five (held-out families)
test       noise: shot; blur: zoom; lighting: brightness; digital: JPEG;
           visibility: all five (held-out family)
=========  ====================================================================

Training (H, anything learnt from devices) draws only ``train`` types; every setting is
chosen on ``val`` devices; ``test`` devices are evaluated once. The 8 devices of
:func:`shared.data.corruptions.device_shift` that earlier benchmarks call "seen" all use
train types.

**The generator** (:func:`draw_profile`): a simulated device is a composition of 1..k
shift types from one split, each with its own severity, applied in order, with camera
properties (tilt, occluder position, colour gains, ...) drawn once per device from its
``camera_seed`` and sensor noise drawn per clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from shared.data.clipset import ClipSet
from shared.data.corruptions import FAMILY_OF, SEVERITIES, SHIFT_TYPES, corrupt_clip
from shared.data.flow import compute_flow_batch

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")

#: Families no part of training or setting-selection sees, per split.
HELD_OUT_FAMILIES: dict[Split, tuple[str, ...]] = {
    "train": (),
    "val": ("geometric", "overlay"),
    "test": ("visibility",),
}
_HELD_OUT_TYPES: dict[Split, tuple[str, ...]] = {
    "val": ("pixelate",),
    "test": ("shot_noise", "zoom_blur", "brightness", "jpeg_compression"),
}


def _split_types() -> dict[Split, tuple[str, ...]]:
    held = {
        split: _HELD_OUT_TYPES[split]
        + tuple(t for t in SHIFT_TYPES if FAMILY_OF[t] in HELD_OUT_FAMILIES[split])
        for split in ("val", "test")
    }
    taken = set(held["val"]) | set(held["test"])
    train = tuple(t for t in SHIFT_TYPES if t not in taken)
    return {"train": train, "val": held["val"], "test": held["test"]}


#: Shift types per split; disjoint, and together every type of :data:`SHIFT_TYPES`.
SHIFT_SPLIT: dict[Split, tuple[str, ...]] = _split_types()


def split_of(shift_type: str) -> Split:
    """Which split a shift type belongs to."""
    for split, types in SHIFT_SPLIT.items():
        if shift_type in types:
            return split
    raise ValueError(f"unknown shift type {shift_type!r}; valid: {', '.join(SHIFT_TYPES)}")


@dataclass(frozen=True)
class ShiftStep:
    """One shift type at one severity."""

    shift_type: str
    severity: int


@dataclass(frozen=True)
class DeviceProfile:
    """A simulated camera: shift steps applied in order; ``()`` is a clean camera."""

    steps: tuple[ShiftStep, ...]
    camera_seed: int

    @property
    def name(self) -> str:
        return "+".join(f"{s.shift_type}@{s.severity}" for s in self.steps) or "clean"

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(sorted({FAMILY_OF[s.shift_type] for s in self.steps}))


def draw_profile(
    split: Split,
    rng: np.random.Generator,
    max_steps: int = 3,
    severities: tuple[int, int] = (1, 5),
    clean_probability: float = 0.0,
) -> DeviceProfile:
    """A random device from ``split``: 1..``max_steps`` distinct types, severities in range.

    The number of steps is uniform, the types are distinct and drawn uniformly from the
    split, each severity uniform in ``severities`` (inclusive).
    """
    if split not in SHIFT_SPLIT:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    low, high = severities
    if not (SEVERITIES[0] <= low <= high <= SEVERITIES[-1]) or max_steps < 1:
        raise ValueError(f"need 1 <= severities <= 5 and max_steps >= 1, got {severities}")
    camera_seed = int(rng.integers(2**31))
    if rng.random() < clean_probability:
        return DeviceProfile((), camera_seed)
    types = SHIFT_SPLIT[split]
    count = int(rng.integers(1, min(max_steps, len(types)) + 1))
    chosen = rng.choice(len(types), size=count, replace=False)
    steps = tuple(ShiftStep(types[i], int(rng.integers(low, high + 1))) for i in chosen)
    return DeviceProfile(steps, camera_seed)


def evaluation_profiles(
    split: Split, count: int, seed: int, severities: tuple[int, int] = (3, 5)
) -> list[DeviceProfile]:
    """Held-out devices: every type of ``split`` alone first, then random pairs (mixtures).

    With ``count`` below the number of types, the singles are a seeded random subset.
    """
    rng = np.random.default_rng([seed, 7919])
    types = list(SHIFT_SPLIT[split])
    order = rng.permutation(len(types))
    low, high = severities
    profiles = [
        DeviceProfile(
            (ShiftStep(types[i], int(rng.integers(low, high + 1))),), int(rng.integers(2**31))
        )
        for i in order[:count]
    ]
    while len(profiles) < count:
        profiles.append(draw_profile(split, rng, max_steps=2, severities=severities))
        if len(profiles[-1].steps) < 2:
            profiles.pop()  # keep only mixtures after the singles
    return profiles


def hard_evaluation_profiles(
    split: Split, count: int, seed: int, severities: tuple[int, int] = (4, 5)
) -> list[DeviceProfile]:
    """A harder held-out population: only compositions of 2–3 types, severities 4–5.

    Fixed before any result on it was seen (issue 17): :func:`evaluation_profiles`' test
    devices are mostly single shifts the base model shrugs off, milder than real cameras.
    """
    rng = np.random.default_rng([seed, 104729])
    profiles: list[DeviceProfile] = []
    while len(profiles) < count:
        profile = draw_profile(split, rng, max_steps=3, severities=severities)
        if len(profile.steps) >= 2:
            profiles.append(profile)
    return profiles


def shift_clip(frames: np.ndarray, profile: DeviceProfile, rng: np.random.Generator) -> np.ndarray:
    """One clip [T, H, W, 3] as the device sees it (per-clip randomness from ``rng``)."""
    out = frames
    for index, step in enumerate(profile.steps):
        camera = np.random.default_rng([profile.camera_seed, index])
        out = corrupt_clip(out, step.shift_type, step.severity, rng, camera=camera)
    return out


def shift_clipset(clipset: ClipSet, profile: DeviceProfile, seed: int = 0) -> ClipSet:
    """Every clip through the device (clip ``i`` uses RNG ``[seed, i]``), flow recomputed."""
    if not profile.steps:
        return clipset
    frames = np.empty_like(clipset.frames)
    for i, clip in enumerate(clipset.frames):
        frames[i] = shift_clip(clip, profile, np.random.default_rng([seed, i]))
    flow = compute_flow_batch(frames) if len(frames) else clipset.flow.copy()
    return ClipSet(frames, flow, clipset.labels.copy(), list(clipset.actions), clipset.kind)
