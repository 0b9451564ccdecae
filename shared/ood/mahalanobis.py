"""Mahalanobis distance to class-conditional Gaussians with a shared covariance.

Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks", NeurIPS 2018. https://arxiv.org/abs/1807.03888

Fit on ID features z_i with labels y_i (K classes present, N samples):

    μ_c = mean_{i: y_i = c} z_i
    Σ   = (1/N) Σ_i (z_i - μ_{y_i})(z_i - μ_{y_i})ᵀ + λ·(tr Σ₀ / D)·I      (ridge λ, default 1e-6)

    score(x) = min_c sqrt((z - μ_c)ᵀ Σ⁻¹ (z - μ_c))        (higher = more OOD)

The paper scores with the squared distance (and input pre-processing, not used here); the
square root is monotone, so rankings and all metrics are the same.
"""

from __future__ import annotations

import torch

from shared.ood.base import Detector, Evidence, LinearHead, check_labels


class Mahalanobis(Detector):
    """Minimum Mahalanobis distance of the features to the ID class means.

    Args:
        ridge: relative ridge λ ≥ 0 added to the covariance diagonal, scaled by the mean
            feature variance, so a rank-deficient covariance (N < D, dead channels) still
            inverts.

    Attributes (after fit):
        class_ids_: int64 [K] classes seen in the training labels.
        means_: float64 [K, D] class means.
        covariance_: float64 [D, D] shared covariance including the ridge.
    """

    name = "mahalanobis"
    needs_fit = True

    def __init__(self, ridge: float = 1e-6) -> None:
        super().__init__()
        if not ridge >= 0:
            raise ValueError(f"Mahalanobis ridge must be >= 0, got {ridge}")
        self.ridge = float(ridge)
        self.class_ids_: torch.Tensor | None = None
        self.means_: torch.Tensor | None = None
        self.covariance_: torch.Tensor | None = None
        self._cholesky: torch.Tensor | None = None

    @torch.no_grad()
    def fit(
        self, train: Evidence, labels: torch.Tensor, head: LinearHead | None = None
    ) -> Mahalanobis:
        train = self._check_evidence(train)
        labels = check_labels(labels, len(train), None if head is None else head.num_classes)
        features = train.features.double()
        class_ids = torch.unique(labels)
        means = torch.stack([features[labels == c].mean(dim=0) for c in class_ids])
        # Each sample centred on its own class mean: row of `means` for its label.
        centred = features - means[torch.searchsorted(class_ids, labels)]
        covariance = centred.T @ centred / features.shape[0]
        dim = features.shape[1]
        mean_variance = float(covariance.diagonal().mean())
        # A constant feature set has zero variance; fall back to an absolute ridge there.
        scale = mean_variance if mean_variance > 0 else 1.0
        covariance = covariance + self.ridge * scale * torch.eye(dim, dtype=torch.float64)
        cholesky, info = torch.linalg.cholesky_ex(covariance)
        if int(info) != 0:
            raise ValueError(
                "Mahalanobis: the shared covariance is singular; use a larger ridge "
                f"(got ridge={self.ridge})"
            )
        self.class_ids_, self.means_, self.covariance_ = class_ids, means, covariance
        self._cholesky = cholesky
        self._fitted = True
        return self

    def _whiten(self, features: torch.Tensor) -> torch.Tensor:
        """x → L⁻¹x for Σ = L Lᵀ, so Euclidean distances become Mahalanobis distances."""
        assert self._cholesky is not None
        return torch.linalg.solve_triangular(self._cholesky, features.T, upper=False).T

    @torch.no_grad()
    def score(self, ev: Evidence) -> torch.Tensor:
        ev = self._check_evidence(ev)
        self._require_fitted()
        assert self.means_ is not None
        if ev.features.shape[1] != self.means_.shape[1]:
            raise ValueError(
                f"Mahalanobis: features have D={ev.features.shape[1]}, "
                f"fitted on D={self.means_.shape[1]}"
            )
        distances = torch.cdist(
            self._whiten(ev.features.double()),
            self._whiten(self.means_),
            compute_mode="donot_use_mm_for_euclid_dist",
        )
        return distances.amin(dim=1).to(ev.features.dtype)

    def __repr__(self) -> str:
        return f"Mahalanobis(ridge={self.ridge})"
