"""Energy score.

Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020.
https://arxiv.org/abs/2010.03759

    score(x) = E(x; T) = -T · logsumexp_c(f(x)_c / T)        (higher = more OOD)
"""

from __future__ import annotations

import torch

from shared.ood.base import Detector, Evidence


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy of [N, C] logits → [N]; low energy = confident = ID."""
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


class Energy(Detector):
    """Free energy of the logits at temperature ``temperature`` (default 1); nothing to fit."""

    name = "energy"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"Energy temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    @torch.no_grad()
    def score(self, ev: Evidence) -> torch.Tensor:
        ev = self._check_evidence(ev)
        return energy(ev.logits, self.temperature)

    def __repr__(self) -> str:
        return f"Energy(temperature={self.temperature})"
