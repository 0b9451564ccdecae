"""Zeroth-order optimisation: gradient estimates from forward passes only, and ZO-Adam.

Sources: MeZO (Malladi et al., NeurIPS 2023) for the seed trick and two-sided SPSA, ZOODiP
(CVPR 2025) for the one-sided estimator, its normaliser and ZO-Adam; facts in ALGORITHMS.md.

For a flat parameter vector ``theta`` (d,) and ``n`` Gaussian directions ``z_i ~ N(0, I_d)``:

- one-sided: ``g_i = (L(theta + eps z_i) - L(theta)) / eps``          (n + 1 forward passes)
- two-sided: ``g_i = (L(theta + eps z_i) - L(theta - eps z_i)) / (2 eps)``  (2n forward passes)

and the estimate is ``sum_i g_i z_i`` divided by

- ``"zoodip"`` (default): ``n * sqrt((d_eff + n - 1) / n)``. For a gradient ``g`` the plain average
  has ``E||.||^2 = ||g||^2 (d + n + 1) / n``; ZOODiP's normaliser keeps the estimate's norm near
  ``||g||`` instead, so a step size means the same for any d and n. ``d_eff`` is the dimension the
  subspace gradient keeps (d without it).
- ``"mean"``: ``n`` — MeZO's plain average, an unbiased estimate of the gradient (of the
  Gaussian-smoothed loss; exact for quadratics in the two-sided case).

Directions are never stored: direction i of a step is regenerated from a ``torch.Generator``
seeded with a hash of ``(step_seed, i)``; only the direction in use is alive. A driver,
:func:`zo_minimise`, runs estimator + optimiser (+ optional subspace projection) and counts
forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from device_client.subspace import SubspaceGradient

LossFn = Callable[[Tensor], float]


def direction_seed(step_seed: int, index: int) -> int:
    """Well-mixed 32-bit seed for direction ``index`` of step ``step_seed`` (numpy SeedSequence)."""
    return int(np.random.SeedSequence([step_seed, index]).generate_state(1)[0])


def _evaluate(loss_fn: LossFn, theta: Tensor) -> float:
    value = float(loss_fn(theta))
    if not math.isfinite(value):
        raise ValueError(f"loss_fn returned a non-finite loss ({value})")
    return value


class ZOEstimator:
    """Randomised finite-difference gradient estimator with seed-regenerated Gaussian directions."""

    def __init__(
        self,
        n_directions: int = 1,
        eps: float = 1e-3,
        two_sided: bool = False,
        normalisation: Literal["zoodip", "mean"] = "zoodip",
    ) -> None:
        if isinstance(n_directions, bool) or not isinstance(n_directions, int) or n_directions < 1:
            raise ValueError(f"n_directions must be a positive int, got {n_directions!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if normalisation not in ("zoodip", "mean"):
            raise ValueError(f"normalisation must be 'zoodip' or 'mean', got {normalisation!r}")
        self.n_directions = n_directions
        self.eps = float(eps)
        self.two_sided = two_sided
        self.normalisation = normalisation
        self.last_loss: float | None = None  # L(theta) of the last one-sided estimate

    @property
    def forward_passes_per_step(self) -> int:
        """Loss evaluations one :meth:`estimate` call costs."""
        n = self.n_directions
        return 2 * n if self.two_sided else n + 1

    def direction(self, step_seed: int, index: int, dim: int, dtype: torch.dtype) -> Tensor:
        """Direction ``index`` of step ``step_seed``: N(0, I) of shape (dim,), same seed same z."""
        generator = torch.Generator().manual_seed(direction_seed(step_seed, index))
        return torch.randn(dim, generator=generator, dtype=dtype)

    def normaliser(self, d_eff: int) -> float:
        """What ``sum_i g_i z_i`` is divided by (see the module docstring)."""
        n = self.n_directions
        if self.normalisation == "mean":
            return float(n)
        return n * math.sqrt((d_eff + n - 1) / n)

    def estimate(
        self, loss_fn: LossFn, theta: Tensor, step_seed: int, d_eff: int | None = None
    ) -> Tensor:
        """Gradient estimate at ``theta`` (d,) from forward passes of ``loss_fn`` only.

        ``loss_fn`` maps a flat parameter vector to a scalar loss; it must not keep or modify its
        argument (one work buffer is perturbed in place and reused). ``d_eff`` enters the
        ZOODiP normaliser (default d). Returns a new tensor (d,) of ``theta``'s dtype.
        """
        if not isinstance(theta, Tensor) or theta.dim() != 1 or not theta.is_floating_point():
            raise ValueError(
                "theta must be a flat float tensor of shape (d,), got "
                f"{getattr(theta, 'shape', type(theta).__name__)}"
            )
        if isinstance(step_seed, bool) or not isinstance(step_seed, int) or step_seed < 0:
            raise ValueError(f"step_seed must be a non-negative int, got {step_seed!r}")
        dim = theta.numel()
        d_eff = dim if d_eff is None else d_eff
        if not 1 <= d_eff <= dim:
            raise ValueError(f"d_eff must lie in [1, {dim}], got {d_eff}")
        theta = theta.detach()
        work = theta.clone()
        grad = torch.zeros_like(theta)
        base = None if self.two_sided else _evaluate(loss_fn, theta)
        for index in range(self.n_directions):
            z = self.direction(step_seed, index, dim, theta.dtype)
            loss_plus = _evaluate(loss_fn, work.add_(z, alpha=self.eps))
            if self.two_sided:
                loss_minus = _evaluate(loss_fn, work.add_(z, alpha=-2.0 * self.eps))
                coefficient = (loss_plus - loss_minus) / (2.0 * self.eps)
            else:
                coefficient = (loss_plus - base) / self.eps
            grad.add_(z, alpha=coefficient)
            work.copy_(theta)  # exact restore; no drift from repeated +eps/-eps
            del z
        self.last_loss = base
        return grad.div_(self.normaliser(d_eff))


class ZOAdam:
    """Adam on zeroth-order estimates (ZOODiP: betas 0.9/0.999, eps 1e-3, lr 1e-2).

    The textbook Adam update (Kingma & Ba, bias-corrected moments, the same arithmetic as
    ``torch.optim.Adam`` without weight decay / amsgrad; tested against it), written out rather
    than wrapping ``torch.optim.Adam``: constructing a ``torch.optim`` optimiser imports
    ``torch._dynamo``, which adds ~70-80 MiB to the peak RSS of a device process — more than
    the adaptation itself needs. State (moments, step count) lives across :meth:`step` calls for
    one parameter dimension.
    """

    def __init__(
        self, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-3
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        self._first: Tensor | None = None  # m, shape (d,)
        self._second: Tensor | None = None  # v, shape (d,)
        self.steps_taken = 0

    def step(self, theta: Tensor, grad: Tensor) -> Tensor:
        """One Adam update of ``theta`` (d,) with gradient estimate ``grad`` (d,); returns new θ."""
        if theta.shape != grad.shape or theta.dim() != 1:
            raise ValueError(
                f"theta and grad must be flat and of one shape, got {tuple(theta.shape)} and "
                f"{tuple(grad.shape)}"
            )
        if self._first is None:
            self._first = torch.zeros_like(theta.detach())
            self._second = torch.zeros_like(theta.detach())
        elif self._first.shape != theta.shape:
            raise ValueError(
                f"ZOAdam was used with d={self._first.numel()}, now d={theta.numel()}; "
                "make a new optimiser per parameter vector"
            )
        beta1, beta2 = self.betas
        grad = grad.detach().to(self._first.dtype)
        self.steps_taken += 1
        self._first.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        self._second.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        step_size = self.lr / (1.0 - beta1**self.steps_taken)
        denominator = (self._second / (1.0 - beta2**self.steps_taken)).sqrt_().add_(self.eps)
        return theta.detach() - step_size * self._first / denominator


def zo_minimise(
    loss_fn: LossFn,
    theta0: Tensor,
    steps: int,
    estimator: ZOEstimator,
    optimizer: ZOAdam,
    subspace: SubspaceGradient | None = None,
    callback: Callable[[int, Tensor, float], bool | None] | None = None,
    seed: int = 0,
    monitor: bool = True,
) -> tuple[Tensor, list[tuple[int, float]]]:
    """Minimise ``loss_fn`` over a flat vector with forward passes only.

    Per step: estimate (directions seeded from ``(seed, step)``), project with ``subspace`` if
    given (its ``d_eff`` also enters the ZOODiP normaliser), update with ``optimizer``, record
    the new θ in the subspace buffer. ``history`` is ``[(forward_passes, loss), ...]`` starting
    with ``(0, L(theta0))``; forward_passes counts only the estimator's evaluations. With
    ``monitor`` the loss is re-evaluated at each new θ for the history (not counted: it is
    bookkeeping, not part of the algorithm); without it the one-sided estimator's L(θ) before
    the step is recorded (two-sided estimates then record NaN). ``callback(step, theta, loss)``
    returning True stops early. Returns the final θ and the history.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    theta = theta0.detach().clone()
    history: list[tuple[int, float]] = [(0, _evaluate(loss_fn, theta))]
    forward_passes = 0
    for step in range(steps):
        d_eff = subspace.d_eff if subspace is not None else None
        grad = estimator.estimate(loss_fn, theta, direction_seed(seed, step), d_eff=d_eff)
        if subspace is not None:
            grad = subspace.project(grad)
        theta = optimizer.step(theta, grad)
        if subspace is not None:
            subspace.observe(theta)
        forward_passes += estimator.forward_passes_per_step
        if monitor:
            loss = _evaluate(loss_fn, theta)
        else:
            loss = estimator.last_loss if estimator.last_loss is not None else float("nan")
        history.append((forward_passes, loss))
        if callback is not None and callback(step, theta, loss):
            break
    return theta, history
