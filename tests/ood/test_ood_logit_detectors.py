"""Logit detectors against closed forms worked out by hand or with the math module."""

import math

import numpy as np
import pytest
import torch

from shared.ood import GEN, MSP, Energy, Evidence, MaxLogit, TempScaling, fit_temperature


def _evidence(logits) -> Evidence:
    logits = torch.as_tensor(logits, dtype=torch.float64)
    return Evidence(torch.zeros(logits.shape[0], 1, dtype=torch.float64), logits)


def test_msp_of_known_logits():
    # softmax([log 3, 0]) = [3/4, 1/4]; softmax([0, 0]) = [1/2, 1/2];
    # softmax([log 2, 0, 0]) = [1/2, 1/4, 1/4].
    scores = MSP().score(_evidence([[math.log(3), 0.0]]))
    assert scores.item() == pytest.approx(-0.75)
    scores = MSP().score(_evidence([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0]]))
    assert scores.tolist() == pytest.approx([-1 / 3, -1 / 2])


def test_maxlogit_is_negative_largest_logit():
    scores = MaxLogit().score(_evidence([[1.0, 5.0, -2.0], [-3.0, -4.0, -1.5]]))
    assert scores.tolist() == [-5.0, 1.5]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_energy_is_negative_temperature_logsumexp(temperature):
    logits = [[0.0, 0.0, 0.0], [1.0, -2.0, 3.5]]
    expected = [
        -temperature * math.log(sum(math.exp(v / temperature) for v in row)) for row in logits
    ]
    scores = Energy(temperature).score(_evidence(logits))
    assert scores.tolist() == pytest.approx(expected)
    # Uniform logits at T = 1: E = -log C.
    if temperature == 1.0:
        assert scores[0].item() == pytest.approx(-math.log(3))


def _gen_by_hand(row: list[float], gamma: float, top_m: int) -> float:
    exps = [math.exp(v) for v in row]
    probs = sorted((e / sum(exps) for e in exps), reverse=True)[:top_m]
    return sum(p**gamma * (1 - p) ** gamma for p in probs)


@pytest.mark.parametrize(("gamma", "top_m"), [(0.1, None), (0.1, 2), (0.5, 3), (0.1, 500)])
def test_gen_matches_formula_by_hand(gamma, top_m):
    logits = [[2.0, 0.5, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [8.0, -3.0, 1.0, 2.0]]
    m = min(4 if top_m is None else top_m, 4)
    expected = [_gen_by_hand(row, gamma, m) for row in logits]
    scores = GEN(gamma=gamma, top_m=top_m).score(_evidence(logits))
    assert scores.tolist() == pytest.approx(expected, rel=1e-10)


def test_gen_uniform_exceeds_confident():
    # Uniform over 4 classes: 4 · (1/4)^γ (3/4)^γ, larger than for a peaked distribution.
    scores = GEN().score(_evidence([[0.0] * 4, [20.0, 0.0, 0.0, 0.0]]))
    assert scores[0].item() == pytest.approx(4 * (0.25 * 0.75) ** 0.1)
    assert scores[0] > scores[1]


def test_gen_rejects_bad_parameters():
    with pytest.raises(ValueError, match="gamma"):
        GEN(gamma=0.0)
    with pytest.raises(ValueError, match="top_m"):
        GEN(top_m=0)
    with pytest.raises(TypeError, match="top_m"):
        GEN(top_m=2.5)


def test_fixed_temperature_is_msp_of_scaled_logits():
    logits = [[1000.0, 0.0], [3.0, 1.0]]
    expected = [
        -max(math.exp(v / 1000) for v in row) / sum(math.exp(v / 1000) for v in row)
        for row in logits
    ]
    scores = TempScaling(temperature=1000.0).score(_evidence(logits))
    assert scores.tolist() == pytest.approx(expected)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    log_norm = np.log(np.exp(scaled - scaled.max(1, keepdims=True)).sum(1)) + scaled.max(1)
    return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))


def test_fitted_temperature_recovers_generating_temperature():
    # Labels drawn from softmax(logits / 2.5): the NLL-optimal temperature is close to 2.5.
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(8000, 5))
    probs = np.exp(logits / 2.5)
    probs /= probs.sum(1, keepdims=True)
    # Inverse-CDF sampling of one label per row.
    labels = (probs.cumsum(1) < rng.random((8000, 1))).sum(1)
    fitted = fit_temperature(torch.tensor(logits), torch.tensor(labels))
    assert fitted == pytest.approx(2.5, rel=0.08)  # ~2 % sampling error at N = 8000
    # It is the NLL minimum: no point of an independent grid does better.
    grid = np.exp(np.linspace(np.log(1.0), np.log(6.0), 80))
    best_grid = min(_nll(logits, labels, t) for t in grid)
    assert _nll(logits, labels, fitted) <= best_grid + 1e-9


def test_temp_scaling_fit_then_score_uses_fitted_temperature():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(0, 3, size=(500, 4)))
    labels = torch.tensor(rng.integers(0, 4, size=500))
    evidence = Evidence(torch.zeros(500, 1, dtype=torch.float64), logits)
    detector = TempScaling().fit(evidence, labels)
    t = detector.temperature_
    # Random labels → the logits carry no information → a large temperature fits best.
    assert t > 3.0
    expected = -torch.softmax(logits / t, dim=1).max(dim=1).values
    assert torch.allclose(detector.score(evidence), expected)


def test_temp_scaling_rejects_bad_parameters_and_labels():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TempScaling(temperature=-1.0)
    with pytest.raises(ValueError, match="t_min < t_max"):
        TempScaling(t_min=10.0, t_max=1.0)
    evidence = _evidence([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="num_classes=2"):
        TempScaling().fit(evidence, torch.tensor([0, 2]))
