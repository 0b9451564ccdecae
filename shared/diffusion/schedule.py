"""The DDPM noise schedule (Ho et al. 2020) and a sampler.

Linear betas from 1e-4 to 0.02 over ``T = 1000`` steps; ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``
with timesteps indexed 0..T-1. Forward process: ``x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps``.
The denoiser predicts ``eps``. Sampling uses DDIM's update (Song et al. 2021) on an evenly
spaced subset of the T timesteps: with ``eta = 1`` it is DDPM's ancestral sampler on that
subset (and exactly DDPM with all T steps), with ``eta = 0`` it is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

T_STEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02

#: ``eps_model(x_t [B, 1, H, W], t [B] long) -> eps [B, 1, H, W]``
EpsModel = Callable[[Tensor, Tensor], Tensor]


class NoiseSchedule:
    """Per-timestep constants of the DDPM forward process (float64 for accuracy, cast on use)."""

    def __init__(self, steps: int = T_STEPS) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps must be an int >= 2, got {steps!r}")
        self.steps = steps
        betas = torch.linspace(BETA_START, BETA_END, steps, dtype=torch.float64)
        self.alpha_bar = torch.cumprod(1.0 - betas, dim=0)

    def check_t(self, t: Tensor) -> None:
        if t.dtype != torch.long or (t.numel() and (t.min() < 0 or t.max() >= self.steps)):
            raise ValueError(f"timesteps must be int64 in [0, {self.steps}), got {t}")

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t`` for clean images ``x0`` [B, ...], timesteps ``t`` [B] and noise like ``x0``."""
        self.check_t(t)
        ab = self.alpha_bar[t].to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    @torch.no_grad()
    def sample(
        self,
        eps_model: EpsModel,
        shape: tuple[int, ...],
        steps: int = 100,
        eta: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw images of ``shape`` from noise in ``steps`` denoising steps; returns [-1, 1]."""
        if not 1 <= steps <= self.steps:
            raise ValueError(f"sampling steps must lie in [1, {self.steps}], got {steps}")
        times = torch.linspace(self.steps - 1, 0, steps).round().long().unique_consecutive()
        x = torch.randn(shape, generator=generator)
        for i, t in enumerate(times.tolist()):
            ab = float(self.alpha_bar[t])
            ab_prev = float(self.alpha_bar[times[i + 1]]) if i + 1 < len(times) else 1.0
            eps = eps_model(x, torch.full((shape[0],), t, dtype=torch.long))
            x0 = ((x - (1.0 - ab) ** 0.5 * eps) / ab**0.5).clamp(-1.0, 1.0)
            eps = (x - ab**0.5 * x0) / (1.0 - ab) ** 0.5  # consistent with the clamped x0
            sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
            x = ab_prev**0.5 * x0 + max(1.0 - ab_prev - sigma**2, 0.0) ** 0.5 * eps
            if sigma > 0:
                x = x + sigma * torch.randn(shape, generator=generator)
        return x.clamp(-1.0, 1.0)
