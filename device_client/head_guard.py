"""A cheap device-side guard: use the personalised head only while it behaves as at refresh.

The HyperNetwork can be wrong for a camera unlike any it was trained on, and the device
has no labels to notice. Two label-free checks, each a handful of matrix products on
embeddings the device already has:

1. **At refresh** (:meth:`HeadGuard.refresh`): on the window Θ was computed from, the
   personalised head must be at least as confident as the global head — mean maximum
   softmax probability ``msp(Θ) ≥ msp(global) − confidence_slack − k·SE``, where SE is the
   standard error of the per-clip differences msp(Θ) − msp(global) on the window and
   ``k = confidence_standard_errors`` (0: the plain slack rule). A head that makes the
   device's own recent clips *less* certain than the untouched global head has most
   likely moved the decision boundaries the wrong way; the guard then falls back to the
   global head until the next refresh.
2. **Between refreshes** (:meth:`HeadGuard.logits`): the fraction of clips on which the
   personalised and global heads pick different classes is recorded at refresh; when, on
   the current window, it exceeds that reference by more than ``disagreement_margin``,
   the stream has changed in a way the cached Θ was not computed for. ``mode="fallback"``
   then serves the global head; ``mode="blend"`` mixes the two logits with a weight on
   the global head that grows from 0 at the margin to 1 at twice the margin.

Costs: two [W, D] × [D, C] products per check (W = window, C = classes); no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from shared.hypernet import personalised_logits

GuardMode = Literal["fallback", "blend"]

#: refresh-time confidence slack the device uses: chosen on validation devices by
#: ``bench/personalization.py`` (``choose_guard_slack``; slack 0 hurt, 0.05 = best mean)
CONFIDENCE_SLACK = 0.05
#: standard errors of the per-clip confidence difference the check allows on top of the
#: slack (a restored Θ is re-checked on the first few clips of a run, where one unlucky
#: batch must not send it back to the global head); chosen on validation devices by
#: ``bench/personal_threshold.py`` (run-path sweep)
CONFIDENCE_STANDARD_ERRORS = 0.0


@dataclass(frozen=True)
class GuardState:
    """What the guard decided at the last refresh / check (for reports and telemetry)."""

    trusted: bool
    reference_disagreement: float
    disagreement: float
    global_weight: float
    msp_personalised: float
    msp_global: float


def mean_msp(logits: torch.Tensor) -> float:
    """Mean maximum softmax probability of logits [N, C]."""
    return float(torch.softmax(logits, dim=1).max(dim=1).values.mean())


def msp_difference_se(a: torch.Tensor, b: torch.Tensor) -> float:
    """Standard error of the mean per-row difference of max softmax probabilities (0 for
    fewer than two rows: one clip gives no spread to allow for)."""
    if a.shape[0] < 2:
        return 0.0
    diff = torch.softmax(a, dim=1).max(dim=1).values - torch.softmax(b, dim=1).max(dim=1).values
    return float(diff.std(unbiased=True) / a.shape[0] ** 0.5)


def disagreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of rows on which two logit sets [N, C] pick different classes."""
    return float((a.argmax(1) != b.argmax(1)).double().mean())


class HeadGuard:
    """Decides per call whether the device serves the personalised or the global head."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        mode: GuardMode = "fallback",
        confidence_slack: float = 0.0,
        disagreement_margin: float = 0.15,
        confidence_standard_errors: float = 0.0,
    ) -> None:
        if mode not in ("fallback", "blend"):
            raise ValueError(f"mode must be 'fallback' or 'blend', got {mode!r}")
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(
                f"global head must be weight [C, D] and bias [C], got {list(weight.shape)} "
                f"and {list(bias.shape)}"
            )
        if not 0.0 < disagreement_margin <= 1.0 or confidence_slack < 0.0:
            raise ValueError("disagreement_margin must be in (0, 1] and confidence_slack >= 0")
        if confidence_standard_errors < 0.0:
            raise ValueError("confidence_standard_errors must be >= 0")
        self.weight = weight.double()
        self.bias = bias.double()
        self.mode: GuardMode = mode
        self.confidence_slack = confidence_slack
        self.disagreement_margin = disagreement_margin
        self.confidence_standard_errors = confidence_standard_errors
        self.state: GuardState | None = None
        self._theta: torch.Tensor | None = None

    def _both(self, z: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._theta is None:
            raise RuntimeError("call refresh() with the new Θ before asking for logits")
        z = torch.as_tensor(np.asarray(z, dtype=np.float64))
        if z.ndim != 2 or z.shape[1] != self.weight.shape[1]:
            raise ValueError(f"z must be [N, {self.weight.shape[1]}], got {list(z.shape)}")
        personal = personalised_logits(z, self._theta, self.weight.shape[0])
        return personal, z @ self.weight.T + self.bias

    def refresh(self, window: np.ndarray | torch.Tensor, theta: np.ndarray) -> GuardState:
        """Check a new Θ on the window it came from; remember the disagreement there."""
        self._theta = torch.as_tensor(np.asarray(theta, dtype=np.float64))
        personal, global_ = self._both(window)
        msp_p, msp_g = mean_msp(personal), mean_msp(global_)
        allowance = self.confidence_slack + self.confidence_standard_errors * msp_difference_se(
            personal, global_
        )
        trusted = bool(msp_p >= msp_g - allowance)
        rate = disagreement(personal, global_)
        self.state = GuardState(trusted, rate, rate, 0.0 if trusted else 1.0, msp_p, msp_g)
        return self.state

    def global_weight(self, window: np.ndarray | torch.Tensor) -> float:
        """Weight of the global head for the current window (0 = personalised only)."""
        if self.state is None:
            raise RuntimeError("call refresh() with the new Θ before checking a window")
        if not self.state.trusted:
            return 1.0
        personal, global_ = self._both(window)
        rate = disagreement(personal, global_)
        excess = rate - self.state.reference_disagreement - self.disagreement_margin
        if self.mode == "fallback":
            weight = 1.0 if excess > 0 else 0.0
        else:
            weight = float(np.clip(excess / self.disagreement_margin, 0.0, 1.0))
        self.state = GuardState(
            True,
            self.state.reference_disagreement,
            rate,
            weight,
            self.state.msp_personalised,
            self.state.msp_global,
        )
        return weight

    def logits(
        self, z: np.ndarray | torch.Tensor, window: np.ndarray | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [N, C] for z [N, D]: personalised, global or a blend (checked on ``window``,
        default: z itself)."""
        weight = self.global_weight(z if window is None else window)
        personal, global_ = self._both(z)
        return (1.0 - weight) * personal + weight * global_
