"""Subspace gradient (ZOODiP, CVPR 2025): project zeroth-order estimates off the directions in
which the recent optimisation trajectory hardly varied.

Keep a ring buffer of the last ``tau`` parameter *values*. Every ``tau`` observations, centre
(and by default standardise per coordinate, as ZOODiP's reference does) that ``tau x d`` matrix
and fit PCA by SVD: ``min(tau, d)`` orthonormal components, explained-variance ratios
``r_0 >= r_1 >= ...``. ``i*`` is the first index whose cumulative ratio exceeds ``1 - nu``; the
components after it, ``V`` (``min(tau, d) - i* - 1`` rows), together explain less than ``nu`` of
the variance and are projected out of every later estimate: ``g <- g - g V^T V``; the effective
dimension is ``d_eff = d - rows(V)``.

As in the reference, only *fitted* components are removed: when ``d > tau`` the ``d - tau``
directions orthogonal to all fitted components are kept, so at most ``tau`` directions are ever
removed; when ``d <= tau`` the fitted components span R^d and the estimate is confined to the top
``i* + 1`` principal directions. Standardisation makes PCA insensitive to coordinate scales; the
components then describe the standardised trajectory (the same directions as the raw one when
its subspace is spanned by coordinate axes or all coordinates share one scale). Coordinates that
did not move get unit scale instead of a division by zero.
"""

from __future__ import annotations

import torch
from torch import Tensor


class SubspaceGradient:
    """Ring buffer of recent parameters and the PCA projection fitted on it (tau, nu: DESIGN §6)."""

    def __init__(self, tau: int = 128, nu: float = 1e-3, standardise: bool = True) -> None:
        if isinstance(tau, bool) or not isinstance(tau, int) or tau < 2:
            raise ValueError(f"tau must be an int >= 2 (buffer length), got {tau!r}")
        if not 0.0 < nu < 1.0:
            raise ValueError(f"nu must lie in (0, 1), got {nu}")
        self.tau = tau
        self.nu = float(nu)
        self.standardise = standardise
        self._buffer: Tensor | None = None  # (tau, d)
        self._count = 0
        self.removed: Tensor | None = None  # V: low-variance components, (rows(V), d)
        self.explained_variance_ratio: Tensor | None = None
        self.n_fits = 0

    @property
    def dim(self) -> int | None:
        """Parameter dimension d, known after the first observation."""
        return None if self._buffer is None else self._buffer.shape[1]

    @property
    def d_eff(self) -> int | None:
        """Dimensions the projection keeps: ``d - rows(V)`` (d before the first fit)."""
        if self.dim is None or self.removed is None:
            return self.dim
        return self.dim - self.removed.shape[0]

    def observe(self, theta: Tensor) -> None:
        """Record the current flat parameter vector (d,); refits every ``tau`` observations."""
        if not isinstance(theta, Tensor) or theta.dim() != 1 or not theta.is_floating_point():
            raise ValueError(
                f"observe expects a flat float tensor of shape (d,), got "
                f"{getattr(theta, 'shape', type(theta).__name__)}"
            )
        if self._buffer is None:
            self._buffer = torch.zeros(self.tau, theta.numel(), dtype=torch.float32)
        elif theta.numel() != self._buffer.shape[1]:
            raise ValueError(
                f"parameter dimension changed: buffer holds d={self._buffer.shape[1]}, "
                f"got d={theta.numel()}"
            )
        self._buffer[self._count % self.tau].copy_(theta.detach())
        self._count += 1
        if self._count % self.tau == 0:
            self._fit()

    def _fit(self) -> None:
        """PCA of the buffered trajectory; V = the components after the first 1 - nu of variance."""
        x = self._buffer - self._buffer.mean(dim=0, keepdim=True)
        if self.standardise:
            std = x.std(dim=0, correction=0, keepdim=True)
            x = x / torch.where(std > 1e-12, std, torch.ones_like(std))
        _, singular_values, vh = torch.linalg.svd(x, full_matrices=False)
        variance = singular_values.double() ** 2
        total = variance.sum()
        if total <= 0:  # the parameters did not move: nothing to learn, keep every direction
            self.removed = None
            self.explained_variance_ratio = None
            return
        ratio = variance / total
        cumulative = torch.cumsum(ratio, dim=0)
        above = torch.nonzero(cumulative > 1.0 - self.nu)
        # Rounding can leave the last cumulative value a hair under 1: then keep every component.
        i_star = int(above[0]) if above.numel() else len(ratio) - 1
        self.removed = vh[i_star + 1 :].contiguous()
        self.explained_variance_ratio = ratio.float()
        self.n_fits += 1

    def project(self, grad: Tensor) -> Tensor:
        """``grad - grad V^T V`` for a flat ``grad`` (d,): identity before the first fit."""
        if self.removed is None:
            return grad
        if grad.shape != (self.removed.shape[1],):
            raise ValueError(
                f"expected a gradient of shape ({self.removed.shape[1]},), got {tuple(grad.shape)}"
            )
        basis = self.removed.to(grad.dtype)
        return grad - (grad @ basis.T) @ basis
