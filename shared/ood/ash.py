"""ASH-S: activation shaping by pruning and scaling.

Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for Out-of-Distribution
Detection", ICLR 2023. https://arxiv.org/abs/2209.09858

Per sample z ∈ R^D, with k = D - round(D·p/100) entries kept (p = 90 → top 10 %):

    s₁ = Σ_j z_j
    z' = z with every entry outside the k largest set to 0
    s₂ = Σ_j z'_j
    z̃  = z' · exp(s₁ / s₂)
    score = base(head(z̃))                    default base: Energy, -logsumexp(W z̃ + b)

Assumes post-ReLU (non-negative) features, as in the paper; then 1 ≤ s₁/s₂ ≤ D/k. The code
does not require it: where s₂ ≤ 0 (no positive mass kept) the pruned vector is left unscaled,
and the exponent is capped at D/k, so scores stay finite for any finite input. Both guards
are no-ops on non-negative features with s₂ > 0.
"""

from __future__ import annotations

import torch

from shared.ood.base import Detector
from shared.ood.shaping import FeatureShapingDetector


def ash_s(features: torch.Tensor, percentile: float = 90.0) -> torch.Tensor:
    """ASH-S shaping of [N, D] features: keep the top (100 - p) %, rescale by exp(s₁/s₂)."""
    dim = features.shape[1]
    keep = dim - round(dim * percentile / 100.0)
    if keep < 1:
        raise ValueError(
            f"ASH percentile={percentile} prunes all D={dim} features; lower the percentile"
        )
    total = features.sum(dim=1)
    top = features.topk(keep, dim=1)
    pruned = torch.zeros_like(features).scatter_(1, top.indices, top.values)
    kept_total = top.values.sum(dim=1)
    positive = kept_total > 0
    ratio = torch.where(positive, total / torch.where(positive, kept_total, 1.0), 0.0)
    return pruned * torch.exp(ratio.clamp(max=dim / keep)).unsqueeze(1)


class ASH(FeatureShapingDetector):
    """ASH-S feature shaping, then a logit detector on the recomputed logits.

    Args:
        percentile: pruning percentile p in [0, 100); 90 keeps the largest 10 % of entries.
        base: detector on the recomputed logits; default Energy.

    Nothing is learnt from the training features, but ``fit`` is still required to pass the
    head (and to fit ``base`` if it needs fitting).
    """

    name = "ash"

    def __init__(self, percentile: float = 90.0, base: Detector | None = None) -> None:
        super().__init__(base)
        if not 0 <= percentile < 100:
            raise ValueError(f"ASH percentile must be in [0, 100), got {percentile}")
        self.percentile = float(percentile)

    def shape(self, features: torch.Tensor) -> torch.Tensor:
        return ash_s(features, self.percentile)

    def __repr__(self) -> str:
        return f"ASH(percentile={self.percentile}, base={self.base!r})"
