"""Actions of the digit-actions data: motion patterns that place an actor on the canvas.

An action is a deterministic function of the frame index ``t``, the clip length ``T`` and
per-clip random :class:`ActionParams`; it returns the actor's :class:`Placement` (centre
offset, scale, rotation). Positions are in pixels of a 32x32 reference canvas (the renderer
rescales them for other sizes); angles in degrees, positive = clockwise *on screen* (y down).

The 6 in-distribution (ID) actions are straight translations, a zoom-in and a clockwise
rotation. The near-OOD actions draw their parameters from exactly the same distribution (same
speeds, offsets, sizes) and differ only in the motion pattern. Two near-OOD sets:

- *near-easy* (:data:`NEAR_OOD_ACTIONS`, the original near split): zoom-out, anticlockwise
  rotation, shake, bounce and circular paths — motions no ID class contains;
- *near-hard* (:data:`NEAR_HARD_ACTIONS`): motions built from the ID primitives — diagonals
  between two ID directions, slow or half-clip ID translations, an ID motion plus a small
  secondary motion — so an ID classifier finds a plausible class for most of them.

Every motion moves actor pixels by roughly 1-3.5 px per frame at 32x32, enough to stand out in
Farnebäck flow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Reference canvas size (pixels) in which placements are expressed.
REFERENCE_SIZE = 32

#: Base rates at speed 1 (speed is drawn per clip in SPEED_RANGE, shared by all actions).
TRANSLATE_PX_PER_FRAME = 2.2
ZOOM_LOG_RATE = 0.13  # log-scale change per frame
ROTATE_DEG_PER_FRAME = 20.0
SHAKE_AMPLITUDE_PX = 2.2
BOUNCE_HEIGHT_PX = 7.0
BOUNCE_RAD_PER_FRAME = 0.8
CIRCLE_RADIUS_PX = 4.5
CIRCLE_RAD_PER_FRAME = 0.6
SPEED_RANGE = (0.75, 1.25)

# Near-hard motions: recipe "D" of bench/near_hard_tuning.py, chosen on validation clips only
# (best detector AUROC in [0.75, 0.95]; BENCHMARKS.md "Near-hard OOD tuning").
#: Angle (degrees) of the diagonal translations from the horizontal (45 = halfway).
DIAGONAL_DEG = 28.0
#: Speed of the slow translations relative to the ID translations.
SLOW_FACTOR = 0.65
#: Fraction of the clip during which a halting translation moves (then it stands still).
HALT_FRACTION = 0.7
#: Secondary motions added to an ID motion: a perpendicular drift (px/frame at speed 1) ...
DRIFT_PX_PER_FRAME = 0.5
#: ... or a perpendicular sine wobble (amplitude px, rad per frame).
WOBBLE_AMPLITUDE_PX = 1.0
WOBBLE_RAD_PER_FRAME = 1.6


@dataclass(frozen=True)
class ActionParams:
    """Per-clip random parameters, shared by all actions (so ID and near-OOD match).

    speed: unitless multiplier of every action's base rate; phase: radians in [0, 2*pi);
    offset_x / offset_y: pixels (reference canvas) added to the actor's centre;
    base_scale: actor scale at mid-clip; base_angle: degrees at mid-clip.
    """

    speed: float = 1.0
    phase: float = 0.0
    offset_x: float = 0.0
    offset_y: float = 0.0
    base_scale: float = 1.0
    base_angle: float = 0.0


@dataclass(frozen=True)
class Placement:
    """Where the actor is in one frame: centre offset from the canvas centre (pixels of the
    reference canvas, y down), scale (1 = base actor size) and angle (degrees, clockwise)."""

    dx: float
    dy: float
    scale: float
    angle: float


def sample_action_params(rng: np.random.Generator) -> ActionParams:
    """Draw one clip's parameters (the same distribution for every action)."""
    return ActionParams(
        speed=float(rng.uniform(*SPEED_RANGE)),
        phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        offset_x=float(rng.uniform(-2.0, 2.0)),
        offset_y=float(rng.uniform(-2.0, 2.0)),
        base_scale=float(rng.uniform(0.9, 1.1)),
        base_angle=float(rng.uniform(-10.0, 10.0)),
    )


def _centred_time(t: int, n_frames: int) -> float:
    """Frame index relative to mid-clip, so a motion is symmetric around the canvas centre."""
    return t - (n_frames - 1) / 2.0


def _moved(p: ActionParams, dx: float, dy: float) -> Placement:
    """The digit's resting placement moved by (dx, dy) pixels."""
    return Placement(p.offset_x + dx, p.offset_y + dy, p.base_scale, p.base_angle)


def _translate(direction_x: float, direction_y: float) -> Callable[..., Placement]:
    def placement(t: int, n_frames: int, p: ActionParams) -> Placement:
        step = TRANSLATE_PX_PER_FRAME * p.speed * _centred_time(t, n_frames)
        return _moved(p, direction_x * step, direction_y * step)

    return placement


def _translate_slow(direction_x: float, direction_y: float) -> Callable[..., Placement]:
    """An ID translation at :data:`SLOW_FACTOR` times its speed (read at call time:
    ``bench.near_hard_tuning`` varies it)."""

    def placement(t: int, n_frames: int, p: ActionParams) -> Placement:
        step = SLOW_FACTOR * TRANSLATE_PX_PER_FRAME * p.speed * _centred_time(t, n_frames)
        return _moved(p, direction_x * step, direction_y * step)

    return placement


def _zoom(sign: float) -> Callable[..., Placement]:
    def placement(t: int, n_frames: int, p: ActionParams) -> Placement:
        log_scale = sign * ZOOM_LOG_RATE * p.speed * _centred_time(t, n_frames)
        return Placement(p.offset_x, p.offset_y, p.base_scale * math.exp(log_scale), p.base_angle)

    return placement


def _rotate(sign: float) -> Callable[..., Placement]:
    def placement(t: int, n_frames: int, p: ActionParams) -> Placement:
        angle = p.base_angle + sign * ROTATE_DEG_PER_FRAME * p.speed * _centred_time(t, n_frames)
        return Placement(p.offset_x, p.offset_y, p.base_scale, angle)

    return placement


def _shake(t: int, n_frames: int, p: ActionParams) -> Placement:
    # Two incommensurate frequencies give an irregular, jittery path without a stored RNG.
    amplitude = SHAKE_AMPLITUDE_PX * p.speed
    dx = amplitude * math.sin(2.9 * t + p.phase)
    dy = amplitude * math.sin(4.1 * t + 1.7 * p.phase)
    return _moved(p, dx, dy)


def _bounce(t: int, n_frames: int, p: ActionParams) -> Placement:
    # A ball bouncing on a floor below the centre: |sin| gives a sharp turn at the floor,
    # about two bounces per 8-frame clip, so up and down alternate within the clip.
    omega = BOUNCE_RAD_PER_FRAME * p.speed
    height = BOUNCE_HEIGHT_PX * abs(math.sin(omega * t + p.phase))
    floor = BOUNCE_HEIGHT_PX / 2
    return Placement(p.offset_x, p.offset_y + floor - height, p.base_scale, p.base_angle)


def _circle(sign: float) -> Callable[..., Placement]:
    def placement(t: int, n_frames: int, p: ActionParams) -> Placement:
        theta = p.phase + sign * CIRCLE_RAD_PER_FRAME * p.speed * t
        # With y pointing down, increasing theta in (cos, sin) turns clockwise on screen.
        return _moved(p, CIRCLE_RADIUS_PX * math.cos(theta), CIRCLE_RADIUS_PX * math.sin(theta))

    return placement


def _translate_diagonal(toward_x: float, toward_y: float) -> Callable[..., Placement]:
    """A translation :data:`DIAGONAL_DEG` from "right"/"left" (toward_x = +-1) toward "up"/"down"
    (toward_y = -+1): at 45 degrees, halfway between two ID directions."""

    def placement(t: int, n_frames: int, p: ActionParams) -> Placement:
        rad = math.radians(DIAGONAL_DEG)
        step = TRANSLATE_PX_PER_FRAME * p.speed * _centred_time(t, n_frames)
        return _moved(p, toward_x * math.cos(rad) * step, toward_y * math.sin(rad) * step)

    return placement


def _translate_halting(direction_x: float, direction_y: float) -> Callable[..., Placement]:
    """An ID translation that moves during the first :data:`HALT_FRACTION` of the clip only."""

    def placement(t: int, n_frames: int, p: ActionParams) -> Placement:
        moving = HALT_FRACTION * (n_frames - 1)
        step = TRANSLATE_PX_PER_FRAME * p.speed * (min(t, moving) - moving / 2)
        return _moved(p, direction_x * step, direction_y * step)

    return placement


def _with_secondary(
    primary: Callable[..., Placement], kind: str, direction_x: float, direction_y: float
) -> Callable[..., Placement]:
    """``primary`` (an ID motion) plus a small secondary motion along (direction_x, direction_y):
    ``"drift"`` = a slow constant translation, ``"wobble"`` = a sine oscillation."""

    def placement(t: int, n_frames: int, p: ActionParams) -> Placement:
        base = primary(t, n_frames, p)
        if kind == "drift":
            shift = DRIFT_PX_PER_FRAME * p.speed * _centred_time(t, n_frames)
        else:
            shift = WOBBLE_AMPLITUDE_PX * math.sin(WOBBLE_RAD_PER_FRAME * p.speed * t + p.phase)
        return Placement(
            base.dx + direction_x * shift, base.dy + direction_y * shift, base.scale, base.angle
        )

    return placement


ACTIONS: dict[str, Callable[[int, int, ActionParams], Placement]] = {
    # in-distribution (order = class label)
    "translate_right": _translate(1.0, 0.0),
    "translate_left": _translate(-1.0, 0.0),
    "translate_up": _translate(0.0, -1.0),
    "translate_down": _translate(0.0, 1.0),
    "zoom_in": _zoom(1.0),
    "rotate_cw": _rotate(1.0),
    # near-OOD
    "zoom_out": _zoom(-1.0),
    "rotate_ccw": _rotate(-1.0),
    "shake": _shake,
    "bounce": _bounce,
    "circle_cw": _circle(1.0),
    "circle_ccw": _circle(-1.0),
    # near-hard OOD: ID primitives recombined
    "translate_up_right": _translate_diagonal(1.0, -1.0),
    "translate_down_left": _translate_diagonal(-1.0, 1.0),
    "translate_right_slow": _translate_slow(1.0, 0.0),
    "translate_up_slow": _translate_slow(0.0, -1.0),
    "translate_left_halting": _translate_halting(-1.0, 0.0),
    "translate_down_wobbling": _with_secondary(_translate(0.0, 1.0), "wobble", 1.0, 0.0),
    "zoom_in_drifting": _with_secondary(_zoom(1.0), "drift", 1.0, 0.0),
    "rotate_cw_drifting": _with_secondary(_rotate(1.0), "drift", 0.0, -1.0),
}

ID_ACTIONS: tuple[str, ...] = (
    "translate_right",
    "translate_left",
    "translate_up",
    "translate_down",
    "zoom_in",
    "rotate_cw",
)
NEAR_OOD_ACTIONS: tuple[str, ...] = (
    "zoom_out",
    "rotate_ccw",
    "shake",
    "bounce",
    "circle_cw",
    "circle_ccw",
)
#: Near-hard OOD ("near_hard" split): recombined ID primitives, disjoint from both sets above.
NEAR_HARD_ACTIONS: tuple[str, ...] = (
    "translate_up_right",
    "translate_down_left",
    "translate_right_slow",
    "translate_up_slow",
    "translate_left_halting",
    "translate_down_wobbling",
    "zoom_in_drifting",
    "rotate_cw_drifting",
)


def near_hard_recipe() -> dict[str, float]:
    """The current near-hard motion settings (part of the near-hard splits' cache key, so
    retuning them never reuses stale clips)."""
    return {
        "diagonal_deg": DIAGONAL_DEG,
        "slow_factor": SLOW_FACTOR,
        "halt_fraction": HALT_FRACTION,
        "drift_px_per_frame": DRIFT_PX_PER_FRAME,
        "wobble_amplitude_px": WOBBLE_AMPLITUDE_PX,
        "wobble_rad_per_frame": WOBBLE_RAD_PER_FRAME,
    }


def action_placements(action: str, n_frames: int, params: ActionParams) -> list[Placement]:
    """The actor's placement in each of ``n_frames`` frames for ``action``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; valid actions: {', '.join(ACTIONS)}")
    if n_frames < 2:
        raise ValueError(f"n_frames must be >= 2 for a motion, got {n_frames}")
    place = ACTIONS[action]
    return [place(t, n_frames, params) for t in range(n_frames)]
