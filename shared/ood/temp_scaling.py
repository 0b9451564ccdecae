"""Temperature-scaled MSP (ODIN without input perturbation).

Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (fitting T by NLL),
https://arxiv.org/abs/1706.04599 ; Liang et al., "Enhancing the Reliability of
Out-of-distribution Image Detection in Neural Networks" (ODIN), ICLR 2018 (large fixed T),
https://arxiv.org/abs/1706.02690

    score(x) = -max_c softmax(f(x) / T)_c        (higher = more OOD)

Two modes:
- ``temperature=None`` (default): T is fitted on ID logits + labels by minimising the mean
  negative log-likelihood, ``T* = argmin_T  mean_i -log softmax(f(x_i)/T)_{y_i}``, with a
  bounded scalar search over log T in [log T_min, log T_max]. The NLL is convex in 1/T, so the
  search finds the global minimum in that range. Training logits are usually over-confident;
  fit on held-out ID validation evidence when you have it.
- ``temperature=1000.0`` (or any fixed value): ODIN's large-temperature setting; nothing fitted.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from shared.ood.base import Detector, Evidence, LinearHead, check_labels


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, t_min: float = 1e-2, t_max: float = 1e4
) -> float:
    """Temperature in [t_min, t_max] minimising the mean NLL of ``logits / T`` (float64)."""
    logits64 = logits.detach().double()
    labels = labels.long()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits64 / math.exp(log_t), labels))

    result = minimize_scalar(
        nll, bounds=(math.log(t_min), math.log(t_max)), method="bounded", options={"xatol": 1e-6}
    )
    return float(math.exp(result.x))


class TempScaling(Detector):
    """MSP of temperature-scaled logits; T fitted by NLL (default) or fixed.

    Args:
        temperature: fixed T > 0 (e.g. 1000 as in ODIN), or None to fit T in ``fit``.
        t_min, t_max: search range for the fitted temperature.

    Attributes:
        temperature_: the temperature in use (fitted or fixed).
    """

    name = "temp_scaling"

    def __init__(
        self, temperature: float | None = None, t_min: float = 1e-2, t_max: float = 1e4
    ) -> None:
        super().__init__()
        if temperature is not None and not temperature > 0:
            raise ValueError(f"TempScaling temperature must be > 0 or None, got {temperature}")
        if not 0 < t_min < t_max:
            raise ValueError(f"TempScaling needs 0 < t_min < t_max, got {t_min}, {t_max}")
        self.temperature = temperature
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.needs_fit = temperature is None
        self.temperature_: float | None = None if temperature is None else float(temperature)

    @torch.no_grad()
    def fit(
        self, train: Evidence, labels: torch.Tensor, head: LinearHead | None = None
    ) -> TempScaling:
        train = self._check_evidence(train)
        labels = check_labels(labels, len(train), train.logits.shape[1])
        if self.temperature is None:
            self.temperature_ = fit_temperature(train.logits, labels, self.t_min, self.t_max)
        self._fitted = True
        return self

    @torch.no_grad()
    def score(self, ev: Evidence) -> torch.Tensor:
        ev = self._check_evidence(ev)
        self._require_fitted()
        assert self.temperature_ is not None
        return -torch.softmax(ev.logits / self.temperature_, dim=1).amax(dim=1)

    def __repr__(self) -> str:
        return f"TempScaling(temperature={self.temperature}, temperature_={self.temperature_})"
