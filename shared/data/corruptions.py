"""Camera corruptions in the style of the "-C" benchmarks, for simulated device shift.

Each corruption maps a clip ``uint8 [T, H, W, 3]`` and a severity 1-5 to a corrupted clip.
Sensor noise is drawn afresh for every frame (a real camera's noise changes frame to frame);
optical properties — blur kernels, fog, colour cast — are drawn once per clip and held
constant. Severities were set for 32x32 clips; severity 5 is deliberately harsh (a model
trained on clean clips should lose well over 15 accuracy points on average).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from shared.data.clipset import ClipSet
from shared.data.flow import compute_flow_batch
from shared.data.tensors import validate_clip

# Per-corruption parameters for severities 1..5 (index 0 = severity 1). Units in comments.
# Calibrated against the default two-stream model: its flow stream shrugs off blur and
# colour casts, so noise, contrast and pixelation carry the severity-5 shift (BENCHMARKS.md).
_GAUSSIAN_SIGMA = (0.06, 0.12, 0.20, 0.32, 0.50)  # std on a [0, 1] scale
_SHOT_PHOTONS = (40.0, 16.0, 6.0, 2.5, 1.0)  # photons at full white
_IMPULSE_FRACTION = (0.03, 0.08, 0.15, 0.26, 0.40)  # fraction of salt-and-pepper pixels
_SPECKLE_SIGMA = (0.25, 0.45, 0.70, 1.05, 1.60)  # multiplicative std
_DEFOCUS_RADIUS = (1.0, 1.6, 2.3, 3.2, 4.5)  # disk radius, pixels at 32x32
_MOTION_LENGTH = (3.0, 4.5, 6.5, 9.0, 12.0)  # kernel length, pixels at 32x32
_BRIGHTNESS_SHIFT = (0.15, 0.25, 0.35, 0.45, 0.58)  # added to V channel (HSV, [0, 1])
_CONTRAST_FACTOR = (0.40, 0.25, 0.14, 0.07, 0.03)  # scale of deviations from the mean
_FOG_STRENGTH = (0.25, 0.40, 0.55, 0.70, 0.82)  # blend weight of a bright fog layer
_PIXELATE_FACTOR = (0.5, 0.35, 0.25, 0.16, 0.10)  # resolution kept
_JPEG_QUALITY = (25, 15, 10, 6, 2)  # cv2 JPEG quality
_COLOUR_CAST = (0.15, 0.25, 0.38, 0.52, 0.68)  # per-channel gain deviation


def _as_float(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) / 255.0


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _scaled(value: float, frames: np.ndarray) -> float:
    """Lengths are tuned at 32x32; scale them with the frame size."""
    return value * frames.shape[1] / 32.0


def gaussian_noise(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    x = _as_float(frames)
    return _to_uint8(x + rng.normal(0.0, _GAUSSIAN_SIGMA[severity - 1], x.shape))


def shot_noise(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    photons = _SHOT_PHOTONS[severity - 1]
    return _to_uint8(rng.poisson(_as_float(frames) * photons) / photons)


def impulse_noise(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    x = _as_float(frames)
    hit = rng.random(x.shape) < _IMPULSE_FRACTION[severity - 1]
    x[hit] = rng.integers(0, 2, size=int(hit.sum())).astype(np.float32)
    return _to_uint8(x)


def speckle_noise(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    x = _as_float(frames)
    return _to_uint8(x * (1.0 + rng.normal(0.0, _SPECKLE_SIGMA[severity - 1], x.shape)))


def _filter_frames(frames: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    x = _as_float(frames)
    out = np.stack([cv2.filter2D(f, -1, kernel, borderType=cv2.BORDER_REFLECT) for f in x])
    return _to_uint8(out)


def defocus_blur(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius = _scaled(_DEFOCUS_RADIUS[severity - 1], frames)
    half = int(np.ceil(radius))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    # Disk with a soft one-pixel edge, so fractional radii change the kernel smoothly.
    kernel = np.clip(radius + 0.5 - np.sqrt(xx**2 + yy**2), 0.0, 1.0).astype(np.float32)
    return _filter_frames(frames, kernel / kernel.sum())


def motion_blur(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    length = _scaled(_MOTION_LENGTH[severity - 1], frames)
    angle = rng.uniform(0.0, 180.0)  # one shake direction per clip (a camera property)
    half = int(np.ceil(length / 2))
    kernel = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float32)
    cv2.line(kernel, (0, half), (2 * half, half), 1.0, 1)
    rotation = cv2.getRotationMatrix2D((half, half), angle, length / (2 * half + 1))
    kernel = cv2.warpAffine(kernel, rotation, kernel.shape[::-1])
    return _filter_frames(frames, kernel / max(kernel.sum(), 1e-6))


def brightness(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    hsv = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2HSV_FULL) for f in frames]).astype(np.float32)
    hsv[..., 2] = np.clip(hsv[..., 2] + 255.0 * _BRIGHTNESS_SHIFT[severity - 1], 0, 255)
    hsv = hsv.astype(np.uint8)
    return np.stack([cv2.cvtColor(f, cv2.COLOR_HSV2RGB_FULL) for f in hsv])


def contrast(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    x = _as_float(frames)
    means = x.mean(axis=(1, 2, 3), keepdims=True)
    return _to_uint8((x - means) * _CONTRAST_FACTOR[severity - 1] + means)


def _cloud_layer(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random field in [0, 1], sum of octaves (a cheap plasma fractal)."""
    field = np.zeros((size, size), dtype=np.float32)
    for octave, weight in ((2, 1.0), (4, 0.5), (8, 0.25)):
        coarse = rng.random((octave, octave)).astype(np.float32)
        field += weight * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def fog(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    x = _as_float(frames)
    strength = _FOG_STRENGTH[severity - 1]
    layer = (0.6 + 0.4 * _cloud_layer(rng, frames.shape[1]))[None, :, :, None]
    weight = strength * (0.7 + 0.3 * _cloud_layer(rng, frames.shape[1]))[None, :, :, None]
    return _to_uint8(x * (1 - weight) + layer * weight)


def pixelate(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    size = frames.shape[1]
    small = max(2, round(size * _PIXELATE_FACTOR[severity - 1]))
    out = [
        cv2.resize(
            cv2.resize(f, (small, small), interpolation=cv2.INTER_AREA),
            (size, size),
            interpolation=cv2.INTER_NEAREST,
        )
        for f in frames
    ]
    return np.stack(out)


def jpeg_compression(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    quality = [int(cv2.IMWRITE_JPEG_QUALITY), _JPEG_QUALITY[severity - 1]]
    out = []
    for frame in frames:
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), quality)
        if not ok:
            raise RuntimeError("OpenCV failed to JPEG-encode a frame")
        out.append(cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return np.stack(out)


def colour_cast(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A wrong white balance: per-channel gains drawn once per clip."""
    deviation = _COLOUR_CAST[severity - 1]
    gains = 1.0 + deviation * rng.choice([-1.0, 1.0], size=3) * rng.uniform(0.6, 1.0, size=3)
    return _to_uint8(_as_float(frames) * gains.astype(np.float32))


_CORRUPTION_FUNCTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "brightness": brightness,
    "contrast": contrast,
    "fog": fog,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "colour_cast": colour_cast,
}
CORRUPTIONS: tuple[str, ...] = tuple(_CORRUPTION_FUNCTIONS)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)


def _check(corruption: str, severity: int) -> None:
    if corruption not in _CORRUPTION_FUNCTIONS:
        raise ValueError(
            f"unknown corruption {corruption!r}; valid corruptions: {', '.join(CORRUPTIONS)}"
        )
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer):
        raise TypeError(f"severity must be an int in 1..5, got {type(severity).__name__}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be in 1..5, got {severity}")


def corrupt_clip(
    frames: np.ndarray, corruption: str, severity: int, rng: np.random.Generator
) -> np.ndarray:
    """Corrupt one clip uint8 [T, H, W, 3] -> uint8 [T, H, W, 3] (same shape)."""
    _check(corruption, severity)
    validate_clip(frames)
    if frames.ndim != 4:
        raise ValueError(f"corrupt_clip takes one clip [T, H, W, 3], got {tuple(frames.shape)}")
    return _CORRUPTION_FUNCTIONS[corruption](frames, int(severity), rng)


def corrupt_clipset(clipset: ClipSet, corruption: str, severity: int, seed: int = 0) -> ClipSet:
    """Corrupt every clip (clip ``i`` uses RNG ``[seed, i]``) and recompute its flow."""
    _check(corruption, severity)
    frames = np.empty_like(clipset.frames)
    for i, clip in enumerate(clipset.frames):
        frames[i] = corrupt_clip(clip, corruption, severity, np.random.default_rng([seed, i]))
    flow = compute_flow_batch(frames) if len(frames) else clipset.flow.copy()
    return ClipSet(frames, flow, clipset.labels.copy(), list(clipset.actions), clipset.kind)


@dataclass(frozen=True)
class DeviceShift:
    """The camera corruption a simulated device sees."""

    corruption: str
    severity: int


#: Simulated devices see severity-5 shift: the harsh case that adaptation must fix.
DEVICE_SHIFT_SEVERITY = 5


def device_shift(device_index: int, seed: int = 0) -> DeviceShift:
    """Deterministic corruption for device ``device_index``.

    Devices 0..len(CORRUPTIONS)-1 get distinct corruptions (a seeded permutation of the
    suite); later devices cycle through further permutations.
    """
    if isinstance(device_index, bool) or not isinstance(device_index, int | np.integer):
        raise TypeError(f"device_index must be an int, got {type(device_index).__name__}")
    if device_index < 0:
        raise ValueError(f"device_index must be >= 0, got {device_index}")
    cycle, position = divmod(int(device_index), len(CORRUPTIONS))
    order = np.random.default_rng([seed, cycle, 104729]).permutation(len(CORRUPTIONS))
    return DeviceShift(CORRUPTIONS[int(order[position])], DEVICE_SHIFT_SEVERITY)
