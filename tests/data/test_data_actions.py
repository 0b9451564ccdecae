import math

import numpy as np
import pytest

from shared.data.actions import (
    ACTIONS,
    ID_ACTIONS,
    NEAR_HARD_ACTIONS,
    NEAR_OOD_ACTIONS,
    ActionParams,
    action_placements,
    sample_action_params,
)

PARAMS = ActionParams(speed=1.0, phase=0.3, offset_x=1.0, offset_y=-1.0, base_scale=1.0)


def _series(action, attribute, n_frames=8, params=PARAMS):
    return np.array([getattr(p, attribute) for p in action_placements(action, n_frames, params)])


def test_action_catalogue():
    assert len(ACTIONS) >= 10
    assert len(ID_ACTIONS) == 6 and len(NEAR_OOD_ACTIONS) >= 4
    assert len(NEAR_HARD_ACTIONS) >= 6 and len(set(NEAR_HARD_ACTIONS)) == len(NEAR_HARD_ACTIONS)
    assert not set(ID_ACTIONS) & set(NEAR_OOD_ACTIONS)
    assert not set(NEAR_HARD_ACTIONS) & (set(ID_ACTIONS) | set(NEAR_OOD_ACTIONS))
    assert set(ID_ACTIONS) | set(NEAR_OOD_ACTIONS) | set(NEAR_HARD_ACTIONS) == set(ACTIONS)


@pytest.mark.parametrize(
    ("action", "attribute", "sign"),
    [
        ("translate_right", "dx", 1),
        ("translate_left", "dx", -1),
        ("translate_up", "dy", -1),  # y points down
        ("translate_down", "dy", 1),
        ("rotate_cw", "angle", 1),
        ("rotate_ccw", "angle", -1),
        ("zoom_in", "scale", 1),
        ("zoom_out", "scale", -1),
    ],
)
def test_monotone_actions_move_the_right_way(action, attribute, sign):
    steps = np.diff(_series(action, attribute))
    assert np.all(sign * steps > 0)


def test_translations_move_one_axis_by_at_least_a_pixel_per_frame():
    slowest = ActionParams(speed=0.75)
    for action, moving, still in [("translate_right", "dx", "dy"), ("translate_up", "dy", "dx")]:
        assert np.abs(np.diff(_series(action, moving, params=slowest))).min() >= 1.0
        assert np.ptp(_series(action, still, params=slowest)) == 0


def test_circles_keep_a_constant_radius_and_turn_opposite_ways():
    radii = []
    for action in ("circle_cw", "circle_ccw"):
        dx = _series(action, "dx") - PARAMS.offset_x
        dy = _series(action, "dy") - PARAMS.offset_y
        radii.append(np.hypot(dx, dy))
        # z-component of the cross product of successive positions: sign = turning direction
        cross = dx[:-1] * dy[1:] - dy[:-1] * dx[1:]
        assert np.all(cross > 0) if action == "circle_cw" else np.all(cross < 0)
    np.testing.assert_allclose(radii[0], radii[0][0])
    np.testing.assert_allclose(radii[1], radii[0][0])


def test_shake_and_bounce_change_direction():
    for action, attribute in (("shake", "dx"), ("bounce", "dy")):
        steps = np.diff(_series(action, attribute))
        assert (steps > 0).any() and (steps < 0).any()


def test_near_ood_motion_differs_from_every_id_motion():
    """Track points 6 px from the actor's centre; some must end up > 2 px apart."""
    params = sample_action_params(np.random.default_rng(3))
    corners = np.array([[6.0, 6.0], [-6.0, 6.0], [6.0, -6.0], [-6.0, -6.0]])

    def trajectory(action):
        points = []
        for p in action_placements(action, 8, params):
            theta = math.radians(p.angle)
            rotation = np.array(
                [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
            )
            points.append(np.array([p.dx, p.dy]) + p.scale * corners @ rotation.T)
        return np.array(points)

    for near in NEAR_OOD_ACTIONS:
        for known in ID_ACTIONS:
            assert np.abs(trajectory(near) - trajectory(known)).max() > 2.0, (near, known)
    # Near-hard motions stay close to an ID motion, yet none of them coincides with one.
    for hard in NEAR_HARD_ACTIONS:
        gaps = [np.abs(trajectory(hard) - trajectory(known)).max() for known in ID_ACTIONS]
        assert min(gaps) > 0.5, (hard, gaps)  # >= 0.5 px off the nearest ID path


@pytest.mark.parametrize(
    ("action", "nearest"),
    [
        ("translate_up_right", ("translate_up", "translate_right")),
        ("translate_down_left", ("translate_down", "translate_left")),
        ("translate_right_slow", ("translate_right",)),
        ("translate_up_slow", ("translate_up",)),
        ("translate_left_halting", ("translate_left",)),
        ("translate_down_wobbling", ("translate_down",)),
        ("zoom_in_drifting", ("zoom_in",)),
        ("rotate_cw_drifting", ("rotate_cw",)),
    ],
)
def test_near_hard_motions_share_primitives_with_id_motions(action, nearest):
    """Each near-hard action's net motion has a positive component along its ID relatives'."""
    hard = action_placements(action, 8, PARAMS)
    for known in nearest:
        ref = action_placements(known, 8, PARAMS)
        along = [
            (h[-1] - h[0]) * (r[-1] - r[0])
            for h, r in (
                ((p.dx for p in hard), (p.dx for p in ref)),
                ((p.dy for p in hard), (p.dy for p in ref)),
                ((math.log(p.scale) for p in hard), (math.log(p.scale) for p in ref)),
                ((p.angle for p in hard), (p.angle for p in ref)),
            )
            for h, r in [(list(h), list(r))]
        ]
        assert sum(along) > 0, (action, known, along)


def test_params_share_one_distribution():
    rng = np.random.default_rng(0)
    speeds = [sample_action_params(rng).speed for _ in range(200)]
    assert 0.7 <= min(speeds) and max(speeds) <= 1.3
    phases = [sample_action_params(rng).phase for _ in range(50)]
    assert all(0 <= p < 2 * math.pi for p in phases)


def test_bad_action_inputs():
    with pytest.raises(ValueError, match="valid actions"):
        action_placements("moonwalk", 8, PARAMS)
    with pytest.raises(ValueError, match="n_frames"):
        action_placements("zoom_in", 1, PARAMS)
