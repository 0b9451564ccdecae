"""Virtual-logit Matching (ViM).

Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022.
https://arxiv.org/abs/2203.10807

With the head logits = W z + b (W: [C, D], b: [C]):

    u      = -pinv(W) b                               origin, so that W(z - u) = logits
    P      = top-`principal_dim` eigenvectors of (1/N) Σ_i (z_i - u)(z_i - u)ᵀ  (ID train)
    r(z)   = || (I - P Pᵀ)(z - u) ||₂                  residual norm off the principal subspace
    α      = mean_i max_c logits_i,c  /  mean_i r(z_i)   (ID train)
    score  = α·r(z) - logsumexp_c logits_c             (higher = more OOD)

i.e. minus (energy-style logsumexp of the real logits vs the virtual logit α·r), the paper's
ID score with the sign flipped. The paper's principal dimensions: 1000 for D ≥ 2048, 512 for
D = 768 and D/2 otherwise; ``principal_dim=None`` picks the same rule (D ≥ 2048 → 1000,
D ≥ 768 → 512, else D // 2), so our D = 128 embeddings use 64.
"""

from __future__ import annotations

import torch

from shared.ood.base import Detector, Evidence, LinearHead, check_labels


def default_principal_dim(feature_dim: int) -> int:
    """The ViM paper's choice of principal subspace size for feature dimension D."""
    if feature_dim >= 2048:
        return 1000
    if feature_dim >= 768:
        return 512
    return feature_dim // 2


class ViM(Detector):
    """Residual off the ID principal subspace, matched to the logits as a virtual logit.

    Args:
        principal_dim: size of the principal subspace kept (1 ≤ dim < D), or None for
            :func:`default_principal_dim`.

    Attributes (after fit):
        origin_: float64 [D] the origin u = -pinv(W)·b.
        residual_basis_: float64 [D, D - dim] orthonormal basis of the residual space.
        alpha_: the scale α.
    """

    name = "vim"
    needs_fit = True

    def __init__(self, principal_dim: int | None = None) -> None:
        super().__init__()
        if principal_dim is not None:
            if isinstance(principal_dim, bool) or not isinstance(principal_dim, int):
                raise TypeError(
                    f"ViM principal_dim must be an int or None, got {type(principal_dim).__name__}"
                )
            if principal_dim < 1:
                raise ValueError(f"ViM principal_dim must be >= 1, got {principal_dim}")
        self.principal_dim = principal_dim
        self.origin_: torch.Tensor | None = None
        self.residual_basis_: torch.Tensor | None = None
        self.alpha_: float | None = None

    def _residual_norm(self, features: torch.Tensor) -> torch.Tensor:
        assert self.origin_ is not None and self.residual_basis_ is not None
        return ((features.double() - self.origin_) @ self.residual_basis_).norm(dim=1)

    @torch.no_grad()
    def fit(self, train: Evidence, labels: torch.Tensor, head: LinearHead | None = None) -> ViM:
        train = self._check_evidence(train)
        check_labels(labels, len(train))
        if head is None:
            raise ValueError("ViM needs the classifier head (W, b): call fit(train, labels, head)")
        dim_total = train.features.shape[1]
        if head.feature_dim != dim_total:
            raise ValueError(f"ViM: head expects D={head.feature_dim}, features have {dim_total}")
        dim = default_principal_dim(dim_total) if self.principal_dim is None else self.principal_dim
        if not 1 <= dim < dim_total:
            raise ValueError(f"ViM principal_dim must satisfy 1 <= dim < D={dim_total}, got {dim}")
        weight, bias = head.weight.double(), head.bias.double()
        self.origin_ = -torch.linalg.pinv(weight) @ bias
        centred = train.features.double() - self.origin_
        eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / centred.shape[0])
        order = torch.argsort(eigenvalues, descending=True)
        self.residual_basis_ = eigenvectors[:, order[dim:]]
        mean_residual = float(self._residual_norm(train.features).mean())
        if mean_residual <= 0:
            raise ValueError(
                "ViM: ID training features have no residual outside the principal subspace; "
                f"use a smaller principal_dim (got {dim})"
            )
        self.alpha_ = float(train.logits.double().amax(dim=1).mean()) / mean_residual
        self._fitted = True
        return self

    @torch.no_grad()
    def score(self, ev: Evidence) -> torch.Tensor:
        ev = self._check_evidence(ev)
        self._require_fitted()
        assert self.origin_ is not None and self.alpha_ is not None
        if ev.features.shape[1] != self.origin_.shape[0]:
            raise ValueError(
                f"ViM: features have D={ev.features.shape[1]}, fitted on D={self.origin_.shape[0]}"
            )
        virtual_logit = self.alpha_ * self._residual_norm(ev.features)
        score = virtual_logit - torch.logsumexp(ev.logits.double(), dim=1)
        return score.to(ev.features.dtype)

    def __repr__(self) -> str:
        return f"ViM(principal_dim={self.principal_dim})"
