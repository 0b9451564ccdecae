"""ReAct and ASH against hand-worked shaping and energies computed with the math module."""

import math

import numpy as np
import pytest
import torch

from shared.ood import ASH, MSP, Evidence, LinearHead, ReAct, ash_s


def _energy_by_hand(features: list[float], weight: list[list[float]], bias: list[float]) -> float:
    logits = [
        sum(w * z for w, z in zip(row, features, strict=True)) + b
        for row, b in zip(weight, bias, strict=True)
    ]
    return -math.log(sum(math.exp(v) for v in logits))


WEIGHT = [[0.1, 0.0, 0.2, -0.1], [0.0, 0.3, -0.2, 0.1]]
BIAS = [0.5, -0.5]


def _head() -> LinearHead:
    return LinearHead(
        torch.tensor(WEIGHT, dtype=torch.float64), torch.tensor(BIAS, dtype=torch.float64)
    )


def _evidence(features) -> Evidence:
    features = torch.tensor(features, dtype=torch.float64)
    return Evidence(features, _head().logits(features))


def test_react_threshold_is_linear_percentile_of_all_entries():
    # Entries 1..20; linear-interpolation 90th percentile: position 0.9·19 = 17.1 → 18 + 0.1.
    train = _evidence(np.arange(1, 21, dtype=float).reshape(5, 4))
    detector = ReAct().fit(train, torch.zeros(5, dtype=torch.long), _head())
    assert detector.threshold_ == pytest.approx(18.1)


def test_react_scores_energy_of_clipped_features():
    train = _evidence(np.arange(1, 21, dtype=float).reshape(5, 4))
    detector = ReAct(percentile=50).fit(train, torch.zeros(5, dtype=torch.long), _head())
    clip = 10.5  # median of 1..20
    queries = [[0.0, 30.0, 5.0, -2.0], [11.0, 1.0, 40.0, 10.0]]
    expected = [_energy_by_hand([min(v, clip) for v in row], WEIGHT, BIAS) for row in queries]
    assert detector.score(_evidence(queries)).tolist() == pytest.approx(expected)


def test_react_with_msp_base():
    train = _evidence(np.arange(1, 21, dtype=float).reshape(5, 4))
    detector = ReAct(percentile=50, base=MSP()).fit(
        train, torch.zeros(5, dtype=torch.long), _head()
    )
    clipped = torch.tensor([[0.0, 10.5, 5.0, -2.0]], dtype=torch.float64)
    expected = -torch.softmax(_head().logits(clipped), dim=1).max()
    assert detector.score(_evidence([[0.0, 30.0, 5.0, -2.0]])).item() == pytest.approx(
        expected.item()
    )


def test_ash_s_shaping_by_hand():
    # D = 10, p = 90 → keep 1 entry. s1 = 55, s2 = 10 → 10·exp(5.5) in the last slot.
    shaped = ash_s(torch.arange(1.0, 11.0, dtype=torch.float64).unsqueeze(0), 90.0)
    expected = [0.0] * 9 + [10 * math.exp(5.5)]
    assert shaped[0].tolist() == pytest.approx(expected)
    # D = 4, p = 50 → keep 2: [3, 0, 1, 4] → s1 = 8, s2 = 7 → [3, 0, 0, 4]·exp(8/7).
    shaped = ash_s(torch.tensor([[3.0, 0.0, 1.0, 4.0]], dtype=torch.float64), 50.0)
    assert shaped[0].tolist() == pytest.approx([3 * math.exp(8 / 7), 0, 0, 4 * math.exp(8 / 7)])


def test_ash_scores_energy_of_shaped_features():
    detector = ASH(percentile=50).fit(
        _evidence([[1.0, 2.0, 3.0, 4.0]] * 3), torch.zeros(3, dtype=torch.long), _head()
    )
    row = [3.0, 0.0, 1.0, 4.0]
    scale = math.exp(8 / 7)
    expected = _energy_by_hand([3 * scale, 0.0, 0.0, 4 * scale], WEIGHT, BIAS)
    assert detector.score(_evidence([row])).item() == pytest.approx(expected)


def test_ash_stays_finite_on_negative_and_zero_features():
    features = torch.tensor(
        [[-1.0, -2.0, -3.0, -4.0], [0.0, 0.0, 0.0, 0.0], [-5.0, 1e-9, -3.0, 2.0]],
        dtype=torch.float64,
    )
    shaped = ash_s(features, 50.0)
    assert torch.isfinite(shaped).all()
    # s2 <= 0 → the pruned vector is left unscaled.
    assert shaped[0].tolist() == [-1.0, -2.0, 0.0, 0.0]
    assert shaped[1].tolist() == [0.0] * 4


def test_ash_rejects_percentile_that_prunes_everything():
    with pytest.raises(ValueError, match="prunes all D=4"):
        ash_s(torch.ones(2, 4), 95.0)
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        ASH(percentile=100.0)
    with pytest.raises(ValueError, match=r"\(0, 100\]"):
        ReAct(percentile=0.0)


@pytest.mark.parametrize("detector_class", [ReAct, ASH])
def test_shaping_requires_a_head(detector_class):
    with pytest.raises(ValueError, match="needs the classifier head"):
        detector_class().fit(_evidence([[1.0, 2.0, 3.0, 4.0]]), torch.zeros(1, dtype=torch.long))
