"""The familiarity-gate bench's rule: who classifies per device, and the choice's tie-breaks."""

from __future__ import annotations

import numpy as np
import pytest

from bench.familiarity_gate import agreement_correlation, gated_accuracy, rule, sweep_of


def _case(ratio: float, agreement: float, theta: float, refined: float) -> dict:
    return {"ratio": ratio, "agreement": agreement, "theta_acc": theta, "refined_acc": refined}


def test_theta_classifies_familiar_cameras_and_disagreeing_ones_under_a_floor():
    cases = [_case(0.5, 1.0, 0.9, 0.8), _case(2.0, 0.7, 0.6, 0.4), _case(3.0, 1.0, 0.5, 0.7)]
    assert gated_accuracy(cases, ratio=1.0) == pytest.approx((0.9 + 0.4 + 0.7) / 3)
    assert gated_accuracy(cases, ratio=1.0, floor=0.8) == pytest.approx((0.9 + 0.6 + 0.7) / 3)
    assert gated_accuracy(cases, ratio=0.0) == pytest.approx((0.8 + 0.4 + 0.7) / 3)


def test_rule_takes_the_best_mean_and_breaks_ties_towards_less_theta_and_no_override():
    # Θ wins on the familiar camera only; no agreement floor changes anything
    sets = {
        "a": [_case(0.5, 1.0, 0.9, 0.8), _case(3.0, 1.0, 0.5, 0.7)],
        "b": [_case(0.9, 1.0, 0.9, 0.8), _case(5.0, 1.0, 0.6, 0.9)],
    }
    sweep = sweep_of(sets)
    assert rule(sweep) == (1.0, 0.0)  # 1.0 ties with 1.25, 1.5 and 2 → the smallest
    assert all(r["mean"] <= max(s["mean"] for s in sweep) for r in sweep)
    # an override that fixes a disagreeing device wins when it is the only way up
    sets["a"].append(_case(4.0, 0.5, 0.9, 0.3))
    assert rule(sweep_of(sets))[1] > 0.0


def test_agreement_correlation_is_over_the_unfamiliar_devices_only():
    cases = [_case(2.0, a, 0.5, 0.5 + g) for a, g in ((0.7, 0.2), (0.8, 0.1), (0.9, 0.0))]
    cases.append(_case(0.1, 0.1, 0.1, 0.9))  # familiar: left out
    result = agreement_correlation(cases, ratio=1.0)
    assert result["devices"] == 3
    assert np.isclose(result["rho"], -1.0)
