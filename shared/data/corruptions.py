"""Camera shifts for simulated devices: the "-C" style suite plus what real cameras add.

Each shift type maps a clip ``uint8 [T, H, W, 3]`` and a severity 1-5 to a shifted clip.
Eight families (:data:`FAMILIES`): noise, blur, lighting and digital act per pixel (the
classic suite, :data:`CORRUPTIONS`); temporal shifts change frame timing (dropped, repeated,
mistimed, smeared, flickering frames); geometric ones change where the camera points and how
its lens maps the scene; visibility ones change what is seen (occlusion, field of view,
vignetting, lens dirt, bars); overlay ones put something between the scene and the lens
(a fence, raindrops, glare, a burned-in caption, a window's reflection). Sensor noise is
drawn afresh for every frame (a real camera's noise changes frame to frame); optical
properties — blur kernels, fog, colour cast, a tilt, an occluder — are held constant over
a clip, and over a whole device when a ``camera`` generator is passed
(:mod:`shared.data.device_shifts` does). Severities were set for
32x32 clips; severity 5 is deliberately harsh (a model trained on clean clips should lose
well over 15 accuracy points on average on the classic suite).
"""

from __future__ import annotations

import inspect
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


def _warp(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Warp float frames [T, H, W, 3] by a 2x3 affine or 3x3 perspective matrix."""
    size = x.shape[2], x.shape[1]
    warp = cv2.warpAffine if matrix.shape == (2, 3) else cv2.warpPerspective
    return np.stack([warp(f, matrix, size, borderMode=cv2.BORDER_REFLECT) for f in x])


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


def motion_blur(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    length = _scaled(_MOTION_LENGTH[severity - 1], frames)
    angle = (camera or rng).uniform(0.0, 180.0)  # one shake direction per clip (a camera property)
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


def fog(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    x = _as_float(frames)
    strength = _FOG_STRENGTH[severity - 1]
    camera = camera or rng
    layer = (0.6 + 0.4 * _cloud_layer(camera, frames.shape[1]))[None, :, :, None]
    weight = strength * (0.7 + 0.3 * _cloud_layer(camera, frames.shape[1]))[None, :, :, None]
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


def colour_cast(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    """A wrong white balance: per-channel gains drawn once per clip (or per camera)."""
    deviation = _COLOUR_CAST[severity - 1]
    camera = camera or rng
    gains = 1.0 + deviation * camera.choice([-1.0, 1.0], size=3) * camera.uniform(0.6, 1.0, size=3)
    return _to_uint8(_as_float(frames) * gains.astype(np.float32))


# --- blur (held out for testing) -------------------------------------------------------------

_ZOOM_BLUR_SPAN = (0.15, 0.28, 0.42, 0.58, 0.8)  # relative zoom range averaged over


def zoom_blur(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A zoom during the exposure: the mean of the frame rescaled about its centre."""
    x = _as_float(frames)
    size = frames.shape[1]
    out = np.zeros_like(x)
    zooms = np.linspace(1.0, 1.0 + _ZOOM_BLUR_SPAN[severity - 1], 6)
    for zoom in zooms:
        matrix = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), 0.0, float(zoom))
        out += _warp(x, matrix)
    return _to_uint8(out / len(zooms))


# --- temporal: frame timing ------------------------------------------------------------------
# A clip is T frames at a nominal rate; real cameras drop, repeat and mistime frames, smear
# them over a long exposure, and flicker under mains lighting.

_FRAME_HOLD = (1.35, 1.7, 2.0, 2.6, 3.2)  # nominal frames per captured frame (a lower rate)
_STUTTER_PROBABILITY = (0.15, 0.25, 0.38, 0.5, 0.62)  # chance a frame repeats the previous one
_JITTER_PROBABILITY = (0.2, 0.35, 0.5, 0.65, 0.8)  # chance a frame comes from a neighbour
_GHOST_WEIGHT = (0.5, 0.63, 0.74, 0.84, 0.92)  # weight of the previous (smeared) frame
_FLICKER_AMPLITUDE = (0.08, 0.14, 0.22, 0.3, 0.4)  # std of the per-frame exposure gain


def frame_drop(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A lower, fixed capture rate: each captured frame is held for ``hold`` nominal frames."""
    hold = _FRAME_HOLD[severity - 1]
    phase = rng.uniform(0.0, hold)
    source = np.floor(np.floor((np.arange(len(frames)) + phase) / hold) * hold - phase)
    return frames[np.clip(source, 0, len(frames) - 1).astype(int)].copy()


def frame_stutter(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Irregular frame repeats (a busy encoder): some frames show the previous one again."""
    source = np.arange(len(frames))
    for t in range(1, len(frames)):
        if rng.random() < _STUTTER_PROBABILITY[severity - 1]:
            source[t] = source[t - 1]
    return frames[source].copy()


def frame_jitter(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Wrong timestamps: some frames are taken one or two steps early or late."""
    offsets = rng.choice([-2, -1, 1, 2], size=len(frames))
    hit = rng.random(len(frames)) < _JITTER_PROBABILITY[severity - 1]
    source = np.clip(np.arange(len(frames)) + offsets * hit, 0, len(frames) - 1)
    return frames[source].copy()


def ghosting(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A long exposure / slow sensor: each frame keeps a trace of the previous ones."""
    x = _as_float(frames)
    weight = _GHOST_WEIGHT[severity - 1]
    for t in range(1, len(x)):
        x[t] = (1.0 - weight) * x[t] + weight * x[t - 1]
    return _to_uint8(x)


def flicker(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Exposure that changes frame to frame (mains-powered lighting, auto-exposure hunting)."""
    gains = 1.0 + _FLICKER_AMPLITUDE[severity - 1] * rng.standard_normal(len(frames))
    return _to_uint8(_as_float(frames) * gains[:, None, None, None].astype(np.float32))


# --- geometric: where the camera points and how its lens maps the scene ----------------------
# Properties of the mounted camera, so drawn from ``camera`` (constant on one device).

_ROTATION_DEG = (8.0, 15.0, 22.0, 30.0, 38.0)  # roll of the camera
_PERSPECTIVE = (0.1, 0.17, 0.24, 0.32, 0.4)  # corner displacement, fraction of the side
_TRANSLATION = (0.06, 0.11, 0.16, 0.22, 0.28)  # offset, fraction of the side
_BARREL_K = (0.3, 0.6, 0.9, 1.25, 1.7)  # radial distortion coefficient
_SHAKE_PX = (0.5, 0.9, 1.4, 2.0, 2.8)  # per-frame jitter std, pixels at 32x32


def rotation(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    """A camera mounted with a roll (a tilted horizon)."""
    angle = _ROTATION_DEG[severity - 1] * (camera or rng).choice([-1.0, 1.0])
    centre = (frames.shape[2] / 2 - 0.5, frames.shape[1] / 2 - 0.5)
    return _to_uint8(_warp(_as_float(frames), cv2.getRotationMatrix2D(centre, angle, 1.0)))


def perspective(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    """A camera looking at the scene at an angle (keystone)."""
    side = frames.shape[1]
    corners = np.float32([[0, 0], [side, 0], [side, side], [0, side]])
    moved = corners + (camera or rng).uniform(-1.0, 1.0, (4, 2)).astype(np.float32) * (
        _PERSPECTIVE[severity - 1] * side
    )
    matrix = cv2.getPerspectiveTransform(corners, moved.astype(np.float32))
    return _to_uint8(_warp(_as_float(frames), matrix))


def translation(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    """A camera aimed off-centre: the scene is shifted (edges reflected)."""
    angle = (camera or rng).uniform(0.0, 2 * np.pi)
    offset = _TRANSLATION[severity - 1] * frames.shape[1]
    matrix = np.float32([[1, 0, offset * np.cos(angle)], [0, 1, offset * np.sin(angle)]])
    return _to_uint8(_warp(_as_float(frames), matrix))


def barrel_distortion(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A wide-angle lens: straight lines bow outwards."""
    side = frames.shape[1]
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    u, v = (xx - side / 2 + 0.5) / (side / 2), (yy - side / 2 + 0.5) / (side / 2)
    factor = 1.0 + _BARREL_K[severity - 1] * (u**2 + v**2)
    factor /= 1.0 + _BARREL_K[severity - 1]  # corners stay in the frame
    map_x = u * factor * (side / 2) + side / 2 - 0.5
    map_y = v * factor * (side / 2) + side / 2 - 0.5
    x = _as_float(frames)
    out = [cv2.remap(f, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT) for f in x]
    return _to_uint8(np.stack(out))


def camera_shake(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A hand-held or wind-blown camera: a small random translation in every frame."""
    x = _as_float(frames)
    shifts = rng.normal(0.0, _scaled(_SHAKE_PX[severity - 1], frames), (len(x), 2))
    out = [
        _warp(f[None], np.float32([[1, 0, dx], [0, 1, dy]]))[0]
        for f, (dx, dy) in zip(x, shifts, strict=True)
    ]
    return _to_uint8(np.stack(out))


# --- visibility: what the camera can see -----------------------------------------------------

_OCCLUDED_FRACTION = (0.06, 0.12, 0.2, 0.28, 0.38)  # area hidden by a static object
_FIELD_OF_VIEW = (0.8, 0.7, 0.6, 0.5, 0.42)  # fraction of the side still visible (zoom-in)
_VIGNETTE = (0.6, 0.9, 1.2, 1.5, 1.9)  # darkening at the corners
_DIRT_SPOTS = (3, 5, 7, 9, 12)  # smudges on the lens
_LETTERBOX = (0.1, 0.16, 0.22, 0.28, 0.34)  # fraction of the side masked on each border


def occlusion(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    """A static object in front of the camera (a post, a sign): one opaque block."""
    camera = camera or rng
    side = frames.shape[1]
    area = _OCCLUDED_FRACTION[severity - 1] * side * side
    aspect = camera.uniform(0.5, 2.0)
    height = int(np.clip(round(np.sqrt(area * aspect)), 1, side))
    width = int(np.clip(round(area / height), 1, side))
    top, left = camera.integers(0, side - height + 1), camera.integers(0, side - width + 1)
    out = frames.copy()
    out[:, top : top + height, left : left + width] = camera.integers(0, 256, 3, dtype=np.uint8)
    return out


def narrow_field_of_view(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    """A longer lens or a digital zoom: only an off-centre part of the scene, enlarged."""
    side = frames.shape[1]
    crop = max(4, round(side * _FIELD_OF_VIEW[severity - 1]))
    camera = camera or rng
    top, left = camera.integers(0, side - crop + 1, size=2)
    return np.stack(
        [
            cv2.resize(f[top : top + crop, left : left + crop], (side, side), cv2.INTER_LINEAR)
            for f in frames
        ]
    )


def vignette(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A lens that darkens towards the corners."""
    side = frames.shape[1]
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    radius = np.hypot(xx - side / 2 + 0.5, yy - side / 2 + 0.5) / (side / np.sqrt(2))
    gain = np.clip(1.0 - _VIGNETTE[severity - 1] * radius**2, 0.0, 1.0)
    return _to_uint8(_as_float(frames) * gain[None, :, :, None])


def lens_dirt(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    """Smudges on the lens: soft, semi-opaque dark blobs fixed in the image."""
    camera = camera or rng
    side = frames.shape[1]
    alpha = np.zeros((side, side), np.float32)
    for _ in range(_DIRT_SPOTS[severity - 1]):
        centre = tuple(int(v) for v in camera.integers(0, side, 2))
        radius = max(1, int(camera.uniform(0.12, 0.28) * side))
        cv2.circle(alpha, centre, radius, float(camera.uniform(0.6, 0.95)), -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=max(0.5, side / 24))[None, :, :, None]
    return _to_uint8(_as_float(frames) * (1.0 - alpha) + 0.15 * alpha)


def letterbox(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A housing or a wrong aspect ratio: black bars hide two opposite borders."""
    side = frames.shape[1]
    bar = max(1, round(_LETTERBOX[severity - 1] * side))
    out = frames.copy()
    out[:, :bar], out[:, side - bar :] = 0, 0
    return out


# --- overlay: something between the scene and the lens that the image shows -----------------
# What installed cameras film through or add on top of the scene. Positions and patterns are
# camera properties; a held-out validation family (shared.data.device_shifts).

_FENCE_SPACING = (8.0, 6.5, 5.0, 4.0, 3.2)  # wire spacing, pixels at 32x32
_RAINDROPS = (5, 9, 14, 20, 28)  # water drops on the camera's window
_GLARE = (0.35, 0.5, 0.65, 0.8, 0.95)  # light a flare adds at its centre
_CAPTION_LINES = (1, 1, 2, 2, 3)  # lines of burned-in text
_CAPTION_SCALE = (0.22, 0.26, 0.3, 0.34, 0.38)  # cv2 font scale at 32x32
_REFLECTION = (0.15, 0.25, 0.35, 0.45, 0.55)  # weight of a reflected room


def fence(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    """Filming through a wire fence or window bars: a thin dark grid, slightly tilted."""
    camera = camera or rng
    side = frames.shape[1]
    spacing = _scaled(_FENCE_SPACING[severity - 1], frames)
    angle = camera.uniform(-0.6, 0.6)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    distance = np.full((side, side), np.inf, np.float32)
    for u in (xx * np.cos(angle) + yy * np.sin(angle), yy * np.cos(angle) - xx * np.sin(angle)):
        offset = (u + camera.uniform(0.0, spacing)) % spacing
        distance = np.minimum(distance, np.minimum(offset, spacing - offset))
    wire = np.clip(1.0 - distance / _scaled(0.6, frames), 0.0, 1.0)[None, :, :, None]
    return _to_uint8(_as_float(frames) * (1.0 - wire) + camera.uniform(0.45, 0.85) * wire)


def raindrops(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    """Water drops on the camera's window: each one a small lens that shows the scene
    blurred and upside down."""
    camera = camera or rng
    side = frames.shape[1]
    alpha = np.zeros((side, side), np.float32)
    for _ in range(_RAINDROPS[severity - 1]):
        centre = tuple(int(v) for v in camera.integers(0, side, 2))
        cv2.circle(alpha, centre, max(1, int(camera.uniform(0.06, 0.16) * side)), 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=max(0.5, side / 64))[None, :, :, None]
    x = _as_float(frames)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), sigmaX=side / 16) for f in x])
    return _to_uint8(x * (1.0 - alpha) + (0.1 + 0.9 * blurred[:, ::-1, ::-1]) * alpha)


def glare(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    """The sun or a lamp shining into the lens: a bright flare and a veil over the image."""
    camera = camera or rng
    side = frames.shape[1]
    cy, cx = camera.uniform(0.0, side, 2)
    radius = camera.uniform(0.25, 0.5) * side
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    flare = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
    light = _GLARE[severity - 1] * rng.uniform(0.9, 1.1) * (0.25 + 0.75 * flare)
    x = _as_float(frames)
    return _to_uint8(x + light[None, :, :, None] * (1.0 - x))  # a screen blend


def caption(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    """A burned-in on-screen display: a running time stamp (and camera name) in white."""
    camera = camera or rng
    side = frames.shape[1]
    scale = _CAPTION_SCALE[severity - 1] * side / 32
    (_, height), _ = cv2.getTextSize("0", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    lines = _CAPTION_LINES[severity - 1]
    top = int(camera.integers(0, max(1, side - lines * (height + 2)) + 1))
    left = int(camera.integers(0, max(1, side // 4)))
    name = f"CAM {int(camera.integers(1, 100))}"
    start = int(rng.integers(86_400))
    out = np.ascontiguousarray(frames.copy())
    for t, frame in enumerate(out):
        seconds = start + t
        text = [f"{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}", name]
        text += [f"{seconds % 1000:03d} KB/S"]
        for line in range(lines):
            origin = (left, top + (line + 1) * (height + 2))
            for colour, weight in (((0, 0, 0), 2), ((255, 255, 255), 1)):
                cv2.putText(frame, text[line], origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                            weight, cv2.LINE_AA)  # fmt: skip
    return out


def reflection(
    frames: np.ndarray,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    """Filming through a window: the room behind the camera (lamps, frames) reflected on top."""
    camera = camera or rng
    side = frames.shape[1]
    room = 0.3 * _cloud_layer(camera, side)[:, :, None] * camera.uniform(0.5, 1.0, 3)
    for _ in range(int(camera.integers(2, 6))):
        top, left = camera.integers(0, side, 2)
        height, width = camera.integers(side // 8, side // 2 + 1, 2)
        room[top : top + height, left : left + width] = camera.uniform(0.5, 1.0, 3)
    room = cv2.GaussianBlur(room.astype(np.float32), (0, 0), sigmaX=max(0.5, side / 48))
    weight = _REFLECTION[severity - 1]
    return _to_uint8(_as_float(frames) * (1.0 - weight) + room[None] * weight)


CorruptionFn = Callable[..., np.ndarray]

_CORRUPTION_FUNCTIONS: dict[str, CorruptionFn] = {
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
#: The classic per-pixel suite (photometric, noise, blur, digital). Device profiles, the
#: evaluation's device-shift table and the CLI use these; :data:`SHIFT_TYPES` has them all.
CORRUPTIONS: tuple[str, ...] = tuple(_CORRUPTION_FUNCTIONS)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: Every camera shift type by family. The split of families and types into train /
#: validation / test lives in :mod:`shared.data.device_shifts`.
FAMILIES: dict[str, tuple[CorruptionFn, ...]] = {
    "noise": (gaussian_noise, shot_noise, impulse_noise, speckle_noise),
    "blur": (defocus_blur, motion_blur, zoom_blur),
    "lighting": (brightness, contrast, fog, colour_cast),
    "digital": (pixelate, jpeg_compression),
    "temporal": (frame_drop, frame_stutter, frame_jitter, ghosting, flicker),
    "geometric": (rotation, perspective, translation, barrel_distortion, camera_shake),
    "visibility": (occlusion, narrow_field_of_view, vignette, lens_dirt, letterbox),
    "overlay": (fence, raindrops, glare, caption, reflection),
}
_SHIFT_FUNCTIONS: dict[str, CorruptionFn] = {
    fn.__name__: fn for functions in FAMILIES.values() for fn in functions
}
SHIFT_TYPES: tuple[str, ...] = tuple(_SHIFT_FUNCTIONS)
FAMILY_OF: dict[str, str] = {
    fn.__name__: family for family, functions in FAMILIES.items() for fn in functions
}
#: Types that draw camera properties (angle, position, gains): given a ``camera`` generator
#: they draw them from it, so one device keeps them constant over its clips.
CAMERA_PROPERTY_TYPES: frozenset[str] = frozenset(
    name for name, fn in _SHIFT_FUNCTIONS.items() if "camera" in inspect.signature(fn).parameters
)


def _check(corruption: str, severity: int) -> None:
    if corruption not in _SHIFT_FUNCTIONS:
        raise ValueError(
            f"unknown corruption {corruption!r}; valid corruptions: {', '.join(SHIFT_TYPES)}"
        )
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer):
        raise TypeError(f"severity must be an int in 1..5, got {type(severity).__name__}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be in 1..5, got {severity}")


def corrupt_clip(
    frames: np.ndarray,
    corruption: str,
    severity: int,
    rng: np.random.Generator,
    camera: np.random.Generator | None = None,
) -> np.ndarray:
    """Corrupt one clip uint8 [T, H, W, 3] -> uint8 [T, H, W, 3] (same shape).

    ``rng`` draws what changes clip to clip; ``camera`` (default: ``rng``) draws the
    camera's fixed properties for the types in :data:`CAMERA_PROPERTY_TYPES`.
    """
    _check(corruption, severity)
    validate_clip(frames)
    if frames.ndim != 4:
        raise ValueError(f"corrupt_clip takes one clip [T, H, W, 3], got {tuple(frames.shape)}")
    function = _SHIFT_FUNCTIONS[corruption]
    if camera is not None and corruption in CAMERA_PROPERTY_TYPES:
        return function(frames, int(severity), rng, camera=camera)
    return function(frames, int(severity), rng)


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
