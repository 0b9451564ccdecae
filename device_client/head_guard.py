"""A cheap device-side guard: use the personalised head only while it behaves as at refresh.

The HyperNetwork can be wrong for a camera unlike any it was trained on, and the device
has no labels to notice. Two label-free checks, each a handful of matrix products on
embeddings the device already has:

1. **At refresh** (:meth:`HeadGuard.refresh`): on the window Θ was computed from, the
   personalised head must score at least as well as the global head on a label-free
   signal, ``signal(Θ) ≥ signal(global) − confidence_slack``; otherwise the guard falls
   back to the global head until the next refresh. Two signals:

   - ``"msp"``: mean maximum softmax probability. A head that makes the device's own
     clips less certain has likely moved the boundaries the wrong way — but on a heavily
     shifted camera *both* heads are unsure, and the rule then rejects heads that help.
   - ``"information"``: mean confidence *and* spread of the decisions, the mutual
     information ``H(mean p) − mean H(p)`` between clip and predicted class, divided by
     ``log C`` (0 … 1). A head that is wrong for the camera tends to pile clips onto a few
     classes (low ``H(mean p)``), even when it is confident; one that reads the camera
     right is sure *and* uses all classes the window holds.

   With ``"msp"`` the check may also allow ``k = confidence_standard_errors`` standard
   errors of the per-clip difference msp(Θ) − msp(global) on the window (0: the plain
   slack rule), so a check on a few clips tolerates more noise than one on a full window.
2. **Between refreshes** (:meth:`HeadGuard.logits`): the fraction of clips on which the
   personalised and global heads pick different classes is recorded at refresh; when, on
   the current window, it exceeds that reference by more than ``disagreement_margin``,
   the stream has changed in a way the cached Θ was not computed for. ``mode="fallback"``
   then serves the global head; ``mode="blend"`` mixes the two logits with a weight on
   the global head that grows from 0 at the margin to 1 at twice the margin.

Costs: two [W, D] × [D, C] products per check (W = window, C = classes); no network.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from device_client.head_refinement import GaussianHead
from shared.hypernet import personalised_logits

GuardMode = Literal["fallback", "blend"]
GuardSignal = Literal["msp", "information"]
GUARD_SIGNALS: tuple[GuardSignal, ...] = ("msp", "information")

#: refresh-time signal and slack the device uses: chosen on validation devices (standard
#: and harder ones, own and other devices' Θ) by ``bench/personalization.py``
#: (``choose_guard_rule``; it tied with msp 0.1 and no check there, the stricter kept)
GUARD_SIGNAL: GuardSignal = "information"
CONFIDENCE_SLACK = 0.05
#: standard errors of the per-clip msp difference the msp check allows on top of the slack;
#: evaluated on validation devices by ``bench/personal_threshold.py`` (run-path sweep):
#: no setting changed a run's outcome, so the plain slack rule is kept
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
    signal: GuardSignal = "msp"
    score_personalised: float = 0.0
    score_global: float = 0.0


def mean_msp(logits: torch.Tensor) -> float:
    """Mean maximum softmax probability of logits [N, C]."""
    return float(torch.softmax(logits, dim=1).max(dim=1).values.mean())


def information(logits: torch.Tensor) -> float:
    """Mutual information between clip and predicted class, ``H(mean p) − mean H(p)``,
    over ``log C`` (1: every clip certain and the classes used evenly)."""
    p = torch.softmax(logits.double(), dim=1)
    mean_entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(1).mean()
    marginal = p.mean(0)
    marginal_entropy = -(marginal * torch.log(marginal.clamp_min(1e-12))).sum()
    return float((marginal_entropy - mean_entropy) / np.log(logits.shape[1]))


SIGNALS = {"msp": mean_msp, "information": information}


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
        signal: GuardSignal = GUARD_SIGNAL,
        confidence_standard_errors: float = 0.0,
    ) -> None:
        if mode not in ("fallback", "blend"):
            raise ValueError(f"mode must be 'fallback' or 'blend', got {mode!r}")
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {sorted(SIGNALS)}, got {signal!r}")
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
        self.signal: GuardSignal = signal
        self.confidence_slack = confidence_slack
        self.disagreement_margin = disagreement_margin
        self.confidence_standard_errors = confidence_standard_errors
        self.state: GuardState | None = None
        self._theta: torch.Tensor | GaussianHead | None = None

    def _both(self, z: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._theta is None:
            raise RuntimeError("call refresh() with the new Θ before asking for logits")
        z = torch.as_tensor(np.asarray(z, dtype=np.float64))
        if z.ndim != 2 or z.shape[1] != self.weight.shape[1]:
            raise ValueError(f"z must be [N, {self.weight.shape[1]}], got {list(z.shape)}")
        if isinstance(self._theta, GaussianHead):
            personal = self._theta.logits(z)
        else:
            personal = personalised_logits(z, self._theta, self.weight.shape[0])
        return personal, z @ self.weight.T + self.bias

    def refresh(
        self, window: np.ndarray | torch.Tensor, theta: np.ndarray | GaussianHead
    ) -> GuardState:
        """Check a new Θ (or its refinement on the device) on the window it came from;
        remember the disagreement there."""
        if isinstance(theta, GaussianHead):
            self._theta = theta
        else:
            self._theta = torch.as_tensor(np.asarray(theta, dtype=np.float64))
        personal, global_ = self._both(window)
        msp_p, msp_g = mean_msp(personal), mean_msp(global_)
        # how decisions spread says nothing on fewer clips than classes (one clip: 0 for
        # every head), so such a window (a restored Θ's first clips) is judged by confidence
        signal = self.signal if len(personal) >= personal.shape[1] else "msp"
        score_p, score_g = SIGNALS[signal](personal), SIGNALS[signal](global_)
        allowance = self.confidence_slack
        if signal == "msp":
            allowance += self.confidence_standard_errors * msp_difference_se(personal, global_)
        trusted = bool(score_p >= score_g - allowance)
        rate = disagreement(personal, global_)
        self.state = GuardState(
            trusted,
            rate,
            rate,
            0.0 if trusted else 1.0,
            msp_p,
            msp_g,
            signal,
            score_p,
            score_g,
        )
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
        self.state = replace(self.state, disagreement=rate, global_weight=weight)
        return weight

    def logits(
        self, z: np.ndarray | torch.Tensor, window: np.ndarray | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [N, C] for z [N, D]: personalised, global or a blend (checked on ``window``,
        default: z itself)."""
        weight = self.global_weight(z if window is None else window)
        personal, global_ = self._both(z)
        return (1.0 - weight) * personal + weight * global_
