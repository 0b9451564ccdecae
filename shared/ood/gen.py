"""Generalized ENtropy score (GEN).

Liu, Lochman & Zach, "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution Detection",
CVPR 2023. https://openaccess.thecvf.com/content/CVPR2023/html/Liu_GEN_Pushing_the_Limits_of_Softmax-Based_Out-of-Distribution_Detection_CVPR_2023_paper.html

With p = softmax(f(x)) sorted in decreasing order and only the M largest kept,

    score(x) = G_γ(p) = Σ_{j=1..M} p_j^γ · (1 - p_j)^γ        (higher = more OOD)

The paper's ID score is -G_γ; γ = 0.1, M = 100 by default (here M = min(100, C)).
"""

from __future__ import annotations

import torch

from shared.ood.base import Detector, Evidence


class GEN(Detector):
    """Generalised entropy of the top-M softmax probabilities; nothing to fit.

    Args:
        gamma: exponent γ > 0; small γ makes the score sensitive to small probabilities.
        top_m: number of largest probabilities M kept; None → min(100, C). A value above C
            is clipped to C.
    """

    name = "gen"

    def __init__(self, gamma: float = 0.1, top_m: int | None = None) -> None:
        super().__init__()
        if not gamma > 0:
            raise ValueError(f"GEN gamma must be > 0, got {gamma}")
        if top_m is not None and (isinstance(top_m, bool) or not isinstance(top_m, int)):
            raise TypeError(f"GEN top_m must be an int or None, got {type(top_m).__name__}")
        if top_m is not None and top_m < 1:
            raise ValueError(f"GEN top_m must be >= 1, got {top_m}")
        self.gamma = float(gamma)
        self.top_m = top_m

    @torch.no_grad()
    def score(self, ev: Evidence) -> torch.Tensor:
        ev = self._check_evidence(ev)
        num_classes = ev.logits.shape[1]
        m = min(100 if self.top_m is None else self.top_m, num_classes)
        probs = torch.softmax(ev.logits, dim=1).topk(m, dim=1).values
        return (probs.pow(self.gamma) * (1.0 - probs).pow(self.gamma)).sum(dim=1)

    def __repr__(self) -> str:
        return f"GEN(gamma={self.gamma}, top_m={self.top_m})"
