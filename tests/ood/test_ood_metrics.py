"""Metrics against hand counts, pair counting and scikit-learn; ID is the positive class."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from shared.ood import accuracy, calibrate_threshold, ood_metrics, roc_points

ID_SCORES = np.arange(1.0, 21.0)  # 20 ID scores 1..20
OOD_SCORES = np.array([2.0, 7.0, 19.0, 19.5, 20.0, 21.0, 30.0, 40.0, 50.0, 60.0])


def test_calibrate_threshold_hand_counted():
    # 19 of 20 ID scores are <= 19 (exactly 95 %); 18 is not enough (90 %).
    assert calibrate_threshold(ID_SCORES) == 19.0
    assert calibrate_threshold(ID_SCORES, 0.9) == 18.0
    assert calibrate_threshold(ID_SCORES, 0.951) == 20.0
    assert calibrate_threshold(ID_SCORES, 1.0) == 20.0
    assert isinstance(calibrate_threshold(ID_SCORES), float)


def test_calibrate_threshold_is_smallest_score_reaching_target():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 15, size=37).astype(float)  # many ties
    for target in (0.5, 0.8, 0.95):
        threshold = calibrate_threshold(scores, target)
        assert np.mean(scores <= threshold) >= target
        below = scores[scores < threshold]
        if below.size:
            assert np.mean(scores <= below.max()) < target


def test_fpr95_hand_counted():
    # Threshold 19: OOD scores 2, 7 and 19 (a tie, counted as accepted) → 3 / 10.
    assert ood_metrics(ID_SCORES, OOD_SCORES)["fpr95"] == pytest.approx(0.3)


def test_auroc_equals_pair_count():
    # AUROC = P(ID score < OOD score) + ½ P(tie), counted over all pairs.
    rng = np.random.default_rng(1)
    id_scores = rng.integers(0, 10, size=25).astype(float)
    ood_scores = rng.integers(3, 14, size=17).astype(float)
    wins = sum((i < o) + 0.5 * (i == o) for i in id_scores for o in ood_scores)
    expected = wins / (len(id_scores) * len(ood_scores))
    assert ood_metrics(id_scores, ood_scores)["auroc"] == pytest.approx(expected)


def test_matches_scikit_learn_in_both_orientations():
    rng = np.random.default_rng(2)
    id_scores = rng.normal(0, 1, 300)
    ood_scores = rng.normal(1, 1.5, 200)
    metrics = ood_metrics(id_scores, ood_scores)
    is_ood = np.r_[np.zeros(300), np.ones(200)]
    scores = np.r_[id_scores, ood_scores]
    # OOD-positive AUROC on the raw score is the same number.
    assert metrics["auroc"] == pytest.approx(roc_auc_score(is_ood, scores))
    assert metrics["aupr_in"] == pytest.approx(average_precision_score(1 - is_ood, -scores))
    assert metrics["aupr_out"] == pytest.approx(average_precision_score(is_ood, scores))
    # FPR95 equals the first point of scikit-learn's ID-positive ROC curve with TPR >= 0.95.
    fpr, tpr, _ = roc_curve(1 - is_ood, -scores, drop_intermediate=False)
    assert metrics["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_fpr95_matches_roc_curve_with_ties():
    rng = np.random.default_rng(3)
    id_scores = rng.integers(0, 8, size=40).astype(float)
    ood_scores = rng.integers(4, 12, size=30).astype(float)
    is_id = np.r_[np.ones(40), np.zeros(30)]
    fpr, tpr, _ = roc_curve(is_id, -np.r_[id_scores, ood_scores], drop_intermediate=False)
    expected = fpr[np.argmax(tpr >= 0.95)]
    assert ood_metrics(id_scores, ood_scores)["fpr95"] == pytest.approx(expected)


def test_perfect_and_swapped_separation():
    low, high = np.linspace(0, 1, 50), np.linspace(2, 3, 40)
    perfect = ood_metrics(low, high)
    assert perfect == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    swapped = ood_metrics(high, low)
    assert swapped["auroc"] == 0.0
    assert swapped["fpr95"] == 1.0
    for value in swapped.values():
        assert isinstance(value, float) and 0.0 <= value <= 1.0


def test_accepts_tensors_and_lists():
    from_numpy = ood_metrics(ID_SCORES, OOD_SCORES)
    assert ood_metrics(torch.tensor(ID_SCORES), OOD_SCORES.tolist()) == from_numpy


def test_roc_points_are_an_id_positive_roc_curve():
    rng = np.random.default_rng(4)
    id_scores, ood_scores = rng.normal(0, 1, 100), rng.normal(1, 1, 80)
    fpr, tpr = roc_points(id_scores, ood_scores)
    assert fpr[0] == 0.0 and tpr[0] == 0.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(ood_metrics(id_scores, ood_scores)["auroc"])


@pytest.mark.parametrize(
    ("id_scores", "ood_scores", "message"),
    [
        ([], [1.0], "id_scores is empty"),
        ([1.0], [], "ood_scores is empty"),
        ([1.0, math.nan], [1.0], "NaN or inf"),
        ([1.0], [math.inf], "NaN or inf"),
        ([[1.0, 2.0]], [1.0], "1-D"),
    ],
)
def test_ood_metrics_rejects_bad_scores(id_scores, ood_scores, message):
    with pytest.raises(ValueError, match=message):
        ood_metrics(id_scores, ood_scores)
    with pytest.raises(ValueError, match=message):
        roc_points(id_scores, ood_scores)


def test_calibrate_threshold_rejects_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        calibrate_threshold([])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        calibrate_threshold([1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        calibrate_threshold([1.0, 2.0], 95)
    with pytest.raises(TypeError, match="numbers"):
        calibrate_threshold(["a", "b"])


def test_accuracy_hand_counted():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    assert accuracy(logits, labels) == 0.5
    assert accuracy(logits.numpy(), labels.numpy()) == 0.5
    assert isinstance(accuracy(logits, labels), float)


def test_accuracy_rejects_bad_inputs():
    logits = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="2-D"):
        accuracy(torch.zeros(3), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="labels has 2 entries"):
        accuracy(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        accuracy(logits, torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"\[0, C=2\)"):
        accuracy(logits, torch.tensor([0, 2, 0]))
    with pytest.raises(ValueError, match="NaN"):
        accuracy(torch.full((3, 2), math.nan), torch.tensor([0, 1, 0]))
