"""Maximum Softmax Probability (MSP).

Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples
in Neural Networks", ICLR 2017. https://arxiv.org/abs/1610.02136

    score(x) = -max_c softmax(f(x))_c        (in [-1, -1/C]; higher = more OOD)
"""

from __future__ import annotations

import torch

from shared.ood.base import Detector, Evidence


class MSP(Detector):
    """Negative maximum softmax probability of the logits; nothing to fit."""

    name = "msp"

    @torch.no_grad()
    def score(self, ev: Evidence) -> torch.Tensor:
        ev = self._check_evidence(ev)
        return -torch.softmax(ev.logits, dim=1).amax(dim=1)
