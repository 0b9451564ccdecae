"""OOD detection metrics, with **ID as the positive class**.

Inputs are OOD scores (higher = more OOD), as every detector in ``shared.ood`` returns. A
sample is *accepted* (predicted ID) when ``score <= threshold``. Hence:

- AUROC: ID positive, ranked by ``-score``. (Equal to the OOD-positive AUROC on ``score``.)
  Ties between an ID and an OOD score count one half, as in scikit-learn.
- AUPR-In: average precision with ID positive, ranked by ``-score``.
- AUPR-Out: average precision with OOD positive, ranked by ``score``.
- FPR95 (FPR at 95 % TPR): the fraction of OOD samples accepted at the threshold
  ``calibrate_threshold(id_scores, 0.95)``: the smallest ID score t such that at least 95 %
  of ID scores are <= t. Ties are counted as accepted on both sides: ID scores equal to t are
  accepted (so slightly more than 95 % of ID may be retained), and OOD scores equal to t count
  as false positives (the pessimistic choice). This is the first point of scikit-learn's ROC
  curve with TPR >= 0.95.

All metrics are plain Python floats in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

ScoreArray = torch.Tensor | np.ndarray | Sequence[float]


def _as_scores(values: object, what: str) -> np.ndarray:
    """A finite, non-empty 1-D float64 array from a tensor, array or sequence."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be a 1-D array of numbers: {error}") from None
    if array.ndim != 1:
        raise ValueError(f"{what} must be 1-D [N], got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{what} is empty; need at least one score")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or inf values; expected finite scores")
    return array


def calibrate_threshold(id_val_scores: ScoreArray, id_acceptance: float = 0.95) -> float:
    """Threshold t that accepts (``score <= t``) at least ``id_acceptance`` of ID scores.

    t is the smallest ID validation score with ``mean(id_val_scores <= t) >= id_acceptance``
    (the inverted-CDF quantile), so with ties slightly more than the target may be accepted.
    The threshold is a score value, not a probability: it is not confined to [0, 1].
    """
    scores = _as_scores(id_val_scores, "id_val_scores")
    if isinstance(id_acceptance, bool) or not 0 < id_acceptance <= 1:
        raise ValueError(f"id_acceptance must be in (0, 1], got {id_acceptance}")
    return float(np.quantile(scores, id_acceptance, method="inverted_cdf"))


def _labels_and_scores(
    id_scores: ScoreArray, ood_scores: ScoreArray
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated scores and is-ID labels (1 for ID, 0 for OOD)."""
    id_array = _as_scores(id_scores, "id_scores")
    ood_array = _as_scores(ood_scores, "ood_scores")
    is_id = np.concatenate([np.ones(id_array.size, dtype=int), np.zeros(ood_array.size, dtype=int)])
    return is_id, np.concatenate([id_array, ood_array])


def ood_metrics(id_scores: ScoreArray, ood_scores: ScoreArray) -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out and FPR95 of OOD scores (higher = more OOD); ID positive.

    Returns ``{"auroc", "aupr_in", "aupr_out", "fpr95"}``, each a float in [0, 1]; see the
    module docstring for exact definitions and tie handling.
    """
    is_id, scores = _labels_and_scores(id_scores, ood_scores)
    ood_array = scores[is_id == 0]
    threshold = calibrate_threshold(scores[is_id == 1], 0.95)
    return {
        "auroc": float(roc_auc_score(is_id, -scores)),
        "aupr_in": float(average_precision_score(is_id, -scores)),
        "aupr_out": float(average_precision_score(1 - is_id, scores)),
        "fpr95": float(np.mean(ood_array <= threshold)),
    }


def roc_points(id_scores: ScoreArray, ood_scores: ScoreArray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve for plotting, ID positive: (fpr, tpr) float arrays, both increasing.

    For each threshold t, tpr = fraction of ID with score <= t (accepted ID) and
    fpr = fraction of OOD with score <= t (accepted OOD).
    """
    is_id, scores = _labels_and_scores(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(is_id, -scores)
    return fpr, tpr


def accuracy(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Top-1 accuracy of [N, C] logits against [N] integer labels, a float in [0, 1]."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().double().numpy()
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    logits_array = np.asarray(logits, dtype=np.float64)
    labels_array = np.asarray(labels)
    if logits_array.ndim != 2 or 0 in logits_array.shape:
        raise ValueError(f"logits must be non-empty 2-D [N, C], got shape {logits_array.shape}")
    if not np.isfinite(logits_array).all():
        raise ValueError("logits contain NaN or inf values; expected finite numbers")
    if labels_array.ndim != 1 or not np.issubdtype(labels_array.dtype, np.integer):
        raise ValueError(
            f"labels must be 1-D integer class indices, got shape {labels_array.shape} "
            f"and dtype {labels_array.dtype}"
        )
    if labels_array.shape[0] != logits_array.shape[0]:
        raise ValueError(
            f"labels has {labels_array.shape[0]} entries "
            f"but logits has {logits_array.shape[0]} rows"
        )
    if labels_array.min() < 0 or labels_array.max() >= logits_array.shape[1]:
        raise ValueError(
            f"labels must be in [0, C={logits_array.shape[1]}), "
            f"got range [{labels_array.min()}, {labels_array.max()}]"
        )
    return float(np.mean(logits_array.argmax(axis=1) == labels_array))
