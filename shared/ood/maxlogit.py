"""Maximum logit (MaxLogit).

Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022.
https://arxiv.org/abs/1911.11132

    score(x) = -max_c f(x)_c        (higher = more OOD)
"""

from __future__ import annotations

import torch

from shared.ood.base import Detector, Evidence


class MaxLogit(Detector):
    """Negative largest logit; unlike MSP it keeps the logit scale. Nothing to fit."""

    name = "maxlogit"

    @torch.no_grad()
    def score(self, ev: Evidence) -> torch.Tensor:
        ev = self._check_evidence(ev)
        return -ev.logits.amax(dim=1)
