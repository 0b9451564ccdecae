"""ReAct: rectified activations.

Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations",
NeurIPS 2021. https://arxiv.org/abs/2111.12797

    c       = p-th percentile of all entries of the ID training features (p = 90)
    z̄       = min(z, c)                      elementwise
    score   = base(head(z̄))                  default base: Energy, -logsumexp(W z̄ + b)

Assumes post-ReLU (non-negative) penultimate features, as in the paper: clipping only the top
tail is what removes the abnormally large OOD activations. The code does not require
non-negativity (negative entries are left as they are), but the method is untested there.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.ood.base import Detector
from shared.ood.shaping import FeatureShapingDetector


class ReAct(FeatureShapingDetector):
    """Clip features at the p-th percentile of ID training features, then a logit detector.

    Args:
        percentile: p in (0, 100]; the clip value is that percentile of the training features.
        base: detector on the recomputed logits; default Energy.

    Attributes (after fit):
        threshold_: the clip value c.
    """

    name = "react"

    def __init__(self, percentile: float = 90.0, base: Detector | None = None) -> None:
        super().__init__(base)
        if not 0 < percentile <= 100:
            raise ValueError(f"ReAct percentile must be in (0, 100], got {percentile}")
        self.percentile = float(percentile)
        self.threshold_: float | None = None

    def _fit_shaping(self, train_features: torch.Tensor) -> None:
        # numpy's percentile has no size limit (torch.quantile refuses > 2**24 elements).
        values = train_features.detach().cpu().double().numpy()
        self.threshold_ = float(np.percentile(values, self.percentile))

    def shape(self, features: torch.Tensor) -> torch.Tensor:
        assert self.threshold_ is not None
        return features.clamp(max=self.threshold_)

    def __repr__(self) -> str:
        return f"ReAct(percentile={self.percentile}, base={self.base!r})"
