"""The built-in "digit-actions" video data: handwritten digits performing motion patterns.

Each clip is ``T`` frames of a ``size x size`` RGB canvas on which an *actor* — a real 8x8
handwritten digit from scikit-learn's ``load_digits``, upscaled and coloured — performs an
action from :mod:`shared.data.actions` over a static procedural texture. The class is the
action. Splits:

- ``train`` / ``val`` / ``test``: the 6 ID actions, balanced; their actors come from three
  disjoint pools of digit images (60 / 15 / 25 %), so test actors are unseen images;
- ``near`` ("near-easy" in reports): the near-OOD actions with test-pool actors, the same
  textures, speeds, sizes and clip length — only the motion differs;
- ``near_hard``: the near-hard actions (ID motion primitives recombined: diagonals, slow or
  halting translations, an ID motion plus a small drift or wobble), test-pool actors;
  ``near_hard_val``: the same actions with val-pool actors, for choosing settings;
- ``far``: another source — photo patches (scikit-learn's two bundled photographs) as actor and
  background, digits over photo backgrounds (both moving with non-ID motions), and
  random-motion (teleporting) digit clips.

Everything is deterministic from ``DigitActionsConfig.seed`` and cached on disk as .npz.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import json
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from sklearn.datasets import load_digits, load_sample_images

from shared.data.actions import (
    ID_ACTIONS,
    NEAR_HARD_ACTIONS,
    NEAR_OOD_ACTIONS,
    REFERENCE_SIZE,
    Placement,
    action_placements,
    near_hard_recipe,
    sample_action_params,
)
from shared.data.clipset import ClipSet
from shared.data.flow import compute_flow_batch

#: Bump when the generator's output changes, so stale caches are not reused.
DATA_FORMAT_VERSION = 2
#: Later splits are appended, so the codes (and the clips) of the earlier ones never change.
SPLITS: tuple[str, ...] = ("train", "val", "test", "near", "far", "near_hard", "near_hard_val")
#: OOD splits of the near-hard actions and the actor pool each draws from.
NEAR_HARD_SPLITS: dict[str, str] = {"near_hard": "test", "near_hard_val": "val"}
#: Actor side in pixels of the 32x32 reference canvas (the 8x8 digit is upscaled to it).
ACTOR_PX = 14
#: Fractions of the 1797 digit images used as train / val / test actors (disjoint pools).
ACTOR_POOL_FRACTIONS = (0.60, 0.15, 0.25)
FAR_SOURCES: tuple[str, ...] = ("photo_actor", "photo_background", "random_motion")
_SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
_TEXTURES = ("noise", "stripes", "gradient", "checker")


@dataclass(frozen=True)
class DigitActionsConfig:
    """Size and seed of the generated data (clip counts are per class / action / split)."""

    n_frames: int = 8
    size: int = 32
    seed: int = 0
    train_per_class: int = 600
    val_per_class: int = 100
    test_per_class: int = 150
    ood_per_action: int = 150
    far_count: int = 600

    def __post_init__(self) -> None:
        if self.n_frames < 2:
            raise ValueError(f"n_frames must be >= 2, got {self.n_frames}")
        if self.size < 16:
            raise ValueError(f"size must be >= 16 pixels, got {self.size}")
        for name in ("train_per_class", "val_per_class", "test_per_class"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.ood_per_action < 0 or self.far_count < 0:
            raise ValueError("ood_per_action and far_count must be >= 0")


# ---------------------------------------------------------------------------- sources


@functools.cache
def _digit_images() -> np.ndarray:
    """The 1797 scikit-learn digits as float32 [N, 8, 8] in [0, 1]."""
    return (load_digits().images / 16.0).astype(np.float32)


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-learn's two bundled photographs (china, flower), uint8 RGB [427, 640, 3]."""
    return tuple(np.asarray(img) for img in load_sample_images().images)


@functools.cache
def actor_pools(seed: int) -> dict[str, np.ndarray]:
    """Disjoint digit-image indices for train, val and test actors."""
    n = len(_digit_images())
    order = np.random.default_rng([seed, 7919]).permutation(n)
    n_train = int(ACTOR_POOL_FRACTIONS[0] * n)
    n_val = int(ACTOR_POOL_FRACTIONS[1] * n)
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }


def _bright_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour with luminance >= 0.6, so the actor stands out in grayscale flow."""
    rgb = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0), 1.0))
    luminance = float(rgb @ np.array([0.299, 0.587, 0.114]))
    if luminance < 0.6:  # mix with white until bright enough
        mix = (0.6 - luminance) / (1.0 - luminance)
        rgb = rgb + mix * (1.0 - rgb)
    return rgb.astype(np.float32)


def _dark_colour(rng: np.random.Generator) -> np.ndarray:
    hue, sat, val = rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.45)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A static procedural background, float32 [size, size, 3] in [0, 0.5]."""
    kind = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "noise":
        sigma = rng.uniform(1.0, 3.0) * size / REFERENCE_SIZE
        pattern = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), sigma)
        pattern = (pattern - pattern.min()) / (np.ptp(pattern) + 1e-6)
    elif kind == "stripes":
        theta, freq = rng.uniform(0, math.pi), rng.uniform(2.0, 6.0)
        pattern = 0.5 + 0.5 * np.sin(
            2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta))
        )
    elif kind == "gradient":
        theta = rng.uniform(0, 2 * math.pi)
        pattern = xx * math.cos(theta) + yy * math.sin(theta)
        pattern = (pattern - pattern.min()) / (np.ptp(pattern) + 1e-6)
        pattern = pattern + 0.15 * rng.standard_normal((size, size)).astype(np.float32)
    else:  # checker
        cells = int(rng.integers(3, 7))
        pattern = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float32)
    pattern = np.clip(pattern, 0.0, 1.0)[..., None]
    low, high = _dark_colour(rng), _dark_colour(rng)
    return (low * (1 - pattern) + high * pattern).astype(np.float32)


def _photo_patch(rng: np.random.Generator, out_px: int, min_px: int, max_px: int) -> np.ndarray:
    """A random square crop of a bundled photo, resized to out_px: float32 [out, out, 3]."""
    photo = _photos()[int(rng.integers(len(_photos())))]
    side = int(rng.integers(min_px, max_px + 1))
    top = int(rng.integers(0, photo.shape[0] - side + 1))
    left = int(rng.integers(0, photo.shape[1] - side + 1))
    crop = photo[top : top + side, left : left + side]
    return cv2.resize(crop, (out_px, out_px), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def _digit_actor(
    rng: np.random.Generator, pool: np.ndarray, actor_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """A coloured digit: colour float32 [A, A, 3] and alpha float32 [A, A]."""
    digit = _digit_images()[int(pool[int(rng.integers(len(pool)))])]
    alpha = cv2.resize(digit, (actor_px, actor_px), interpolation=cv2.INTER_CUBIC)
    alpha = np.clip(alpha * 1.3, 0.0, 1.0)
    colour = np.broadcast_to(_bright_colour(rng), (actor_px, actor_px, 3)).copy()
    return colour, alpha


def _photo_actor(rng: np.random.Generator, actor_px: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo patch with a soft elliptical mask: colour [A, A, 3], alpha [A, A]."""
    colour = _photo_patch(rng, actor_px, 24, 96)
    yy, xx = np.mgrid[0:actor_px, 0:actor_px].astype(np.float32)
    centre = (actor_px - 1) / 2
    radius = ((xx - centre) / (0.5 * actor_px)) ** 2 + ((yy - centre) / (0.45 * actor_px)) ** 2
    alpha = np.clip((1.0 - radius) * 4.0, 0.0, 1.0)
    return colour, alpha


def render_clip(
    background: np.ndarray,
    actor_colour: np.ndarray,
    actor_alpha: np.ndarray,
    placements: Sequence[Placement],
) -> np.ndarray:
    """Composite the actor over the background at each placement: uint8 [T, H, W, 3].

    background: float32 [H, W, 3] in [0, 1]; actor_colour [A, A, 3]; actor_alpha [A, A].
    Placements are in reference-canvas pixels and rescaled to the background's size.
    """
    size = background.shape[0]
    unit = size / REFERENCE_SIZE
    actor_px = actor_alpha.shape[0]
    frames = np.empty((len(placements), size, size, 3), dtype=np.uint8)
    for t, place in enumerate(placements):
        # getRotationMatrix2D turns anticlockwise on screen for positive angles.
        matrix = cv2.getRotationMatrix2D((actor_px / 2, actor_px / 2), -place.angle, place.scale)
        matrix[0, 2] += size / 2 + place.dx * unit - actor_px / 2
        matrix[1, 2] += size / 2 + place.dy * unit - actor_px / 2
        alpha = cv2.warpAffine(actor_alpha, matrix, (size, size), flags=cv2.INTER_LINEAR)
        colour = cv2.warpAffine(actor_colour, matrix, (size, size), flags=cv2.INTER_LINEAR)
        frame = background * (1 - alpha[..., None]) + colour * alpha[..., None]
        frames[t] = np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8)
    return frames


def _random_placements(rng: np.random.Generator, n_frames: int) -> list[Placement]:
    """Incoherent motion: an independent random placement every frame (far-OOD)."""
    return [
        Placement(
            float(rng.uniform(-8, 8)),
            float(rng.uniform(-8, 8)),
            float(rng.uniform(0.6, 1.4)),
            float(rng.uniform(-180, 180)),
        )
        for _ in range(n_frames)
    ]


def _digit_clip(
    rng: np.random.Generator, action: str, pool: np.ndarray, config: DigitActionsConfig
) -> np.ndarray:
    """One ID or near-OOD clip: digit actor on a procedural texture (same recipe for both)."""
    actor_px = round(ACTOR_PX * config.size / REFERENCE_SIZE)
    colour, alpha = _digit_actor(rng, pool, actor_px)
    background = _texture(rng, config.size)
    placements = action_placements(action, config.n_frames, sample_action_params(rng))
    return render_clip(background, colour, alpha, placements)


def _far_clip(
    rng: np.random.Generator, source: str, pool: np.ndarray, config: DigitActionsConfig
) -> tuple[np.ndarray, str]:
    """One far-OOD clip and its description ``"<source>:<motion>"``."""
    actor_px = round(ACTOR_PX * config.size / REFERENCE_SIZE)
    # Far-OOD comes from "another dataset": new appearance *and* motions outside the ID set.
    motion = str(rng.choice([*NEAR_OOD_ACTIONS, "random"]))
    if source == "photo_actor":
        colour, alpha = _photo_actor(rng, actor_px)
        background = _photo_patch(rng, config.size, 48, 200)
    elif source == "photo_background":
        colour, alpha = _digit_actor(rng, pool, actor_px)
        background = _photo_patch(rng, config.size, 48, 200)
    else:  # random_motion
        colour, alpha = _digit_actor(rng, pool, actor_px)
        background = _texture(rng, config.size)
        motion = "random"
    if motion == "random":
        placements = _random_placements(rng, config.n_frames)
    else:
        placements = action_placements(motion, config.n_frames, sample_action_params(rng))
    return render_clip(background, colour, alpha, placements), f"{source}:{motion}"


# ---------------------------------------------------------------------------- splits


def generate_split(split: str, config: DigitActionsConfig = DigitActionsConfig()) -> ClipSet:
    """Generate one split from scratch (no cache). See :func:`load_split`."""
    _check_split(split)
    pools = actor_pools(config.seed)
    if split in ("train", "val", "test"):
        per_class = getattr(config, f"{split}_per_class")
        names = [ID_ACTIONS[i % len(ID_ACTIONS)] for i in range(per_class * len(ID_ACTIONS))]
        labels = [ID_ACTIONS.index(a) for a in names]
        pool, kind = pools[split], "id"
    elif split == "near":
        n = config.ood_per_action * len(NEAR_OOD_ACTIONS)
        names = [NEAR_OOD_ACTIONS[i % len(NEAR_OOD_ACTIONS)] for i in range(n)]
        labels, pool, kind = [-1] * n, pools["test"], "near"
    elif split in NEAR_HARD_SPLITS:
        n = config.ood_per_action * len(NEAR_HARD_ACTIONS)
        names = [NEAR_HARD_ACTIONS[i % len(NEAR_HARD_ACTIONS)] for i in range(n)]
        labels, pool, kind = [-1] * n, pools[NEAR_HARD_SPLITS[split]], "near"
    else:
        names = [FAR_SOURCES[i % len(FAR_SOURCES)] for i in range(config.far_count)]
        labels, pool, kind = [-1] * config.far_count, pools["test"], "far"

    frames = np.empty((len(names), config.n_frames, config.size, config.size, 3), dtype=np.uint8)
    actions: list[str] = []
    for i, name in enumerate(names):
        rng = np.random.default_rng([config.seed, _SPLIT_CODES[split], i])
        if kind == "far":
            frames[i], description = _far_clip(rng, name, pool, config)
            actions.append(description)
        else:
            frames[i] = _digit_clip(rng, name, pool, config)
            actions.append(name)
    if len(names):
        flow = compute_flow_batch(frames)
    else:
        flow = np.zeros((0, config.n_frames - 1, 2, config.size, config.size), np.float32)
    return ClipSet(frames, flow, np.asarray(labels, dtype=np.int64), actions, kind)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def default_cache_dir() -> Path:
    """``$SECDOOD_CACHE_DIR`` if set, else ``~/.cache/secdood/data``."""
    env = os.environ.get("SECDOOD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "secdood" / "data"


def cache_path(
    split: str, config: DigitActionsConfig, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """File that caches ``split`` for ``config``; the key hashes the config and format version."""
    content: dict = {"config": asdict(config), "version": DATA_FORMAT_VERSION}
    if split in NEAR_HARD_SPLITS:
        content["near_hard"] = near_hard_recipe()
    payload = json.dumps(content, sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"digit_actions_v{DATA_FORMAT_VERSION}_{split}_{key}.npz"


def load_split(
    split: str,
    config: DigitActionsConfig = DigitActionsConfig(),
    cache_dir: str | os.PathLike[str] | None = None,
) -> ClipSet:
    """Load a digit-actions split (one of :data:`SPLITS`), generating and caching it on first
    use. Deterministic: the same config gives identical arrays."""
    _check_split(split)
    path = cache_path(split, config, cache_dir)
    if path.is_file():
        try:
            return ClipSet.load(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a truncated or stale file: regenerate it below
    clipset = generate_split(split, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so concurrent readers never see a half-written file.
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
    clipset.save(tmp)
    os.replace(tmp, path)
    return clipset
