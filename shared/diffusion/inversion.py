"""Textual inversion: the objective a new token minimises, and the backprop baseline.

Textual inversion (Gal et al. 2022) learns one token vector ``v`` so that the frozen denoiser,
conditioned on ``v``, denoises the concept's few images well:
``L(v) = mean_i || eps_i - eps_theta(x_{t_i}, t_i, v) ||^2`` with ``x_{t_i}`` the i-th image
noised to timestep ``t_i`` by noise ``eps_i``.

Timesteps are drawn uniformly from ``t_range``: the whole ``[0, T)`` in plain textual inversion,
``[0.5 T, 0.9 T)`` under ZOODiP's *Partial Uniform Timestep Sampling* (PUTS): at low noise the
loss hardly depends on the token (the image is nearly visible), so those draws add variance and
no signal. Within one optimisation step the draws are fixed (:meth:`InversionObjective.resample`),
so every loss evaluation of a zeroth-order estimate sees the same noise — the finite difference
then measures the token's effect, not the change of noise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from shared.diffusion.denoiser import Denoiser
from shared.diffusion.schedule import T_STEPS, NoiseSchedule

#: ZOODiP's Partial Uniform Timestep Sampling range, as fractions of T
PUTS_RANGE = (0.5, 0.9)


def timestep_range(puts: bool, steps: int = T_STEPS) -> tuple[int, int]:
    """``[low, high)`` of uniform timestep draws: PUTS ``[0.5 T, 0.9 T)`` or all of ``[0, T)``."""
    if puts:
        return int(PUTS_RANGE[0] * steps), int(PUTS_RANGE[1] * steps)
    return 0, steps


class InversionObjective:
    """``L(token)`` on the concept images, with per-step draws of timesteps and noise.

    ``images`` [N, 1, 16, 16] in [-1, 1]; ``repeats`` draws per image and step (batch N * repeats).
    Counts its forward passes (one per call, whatever the batch).
    """

    def __init__(
        self,
        model: Denoiser,
        images: Tensor,
        t_range: tuple[int, int],
        seed: int = 0,
        repeats: int = 1,
        schedule: NoiseSchedule | None = None,
    ) -> None:
        self.schedule = schedule or NoiseSchedule()
        low, high = t_range
        if not 0 <= low < high <= self.schedule.steps:
            raise ValueError(f"t_range must satisfy 0 <= low < high <= T, got {t_range}")
        if images.dim() != 4 or len(images) == 0:
            raise ValueError(f"images must be a non-empty [N, 1, H, W] batch, got {images.shape}")
        self.model = model
        self.images = images.repeat(repeats, 1, 1, 1)
        self.t_range = (low, high)
        self.seed = seed
        self.forward_passes = 0
        self.resample(0)

    def resample(self, step: int) -> None:
        """Fix the timesteps and noise of optimisation step ``step`` (reproducible from seed)."""
        seed = int(np.random.SeedSequence([self.seed, step, 7]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        n = len(self.images)
        self.t = torch.randint(*self.t_range, (n,), generator=generator)
        self.noise = torch.randn(self.images.shape, generator=generator)
        self.noisy = self.schedule.add_noise(self.images, self.t, self.noise)

    def loss_tensor(self, token: Tensor) -> Tensor:
        """The loss as a tensor (differentiable in ``token`` [token_dim] when it requires grad)."""
        self.forward_passes += 1
        tokens = token.reshape(1, -1).expand(len(self.images), -1)
        predicted = self.model(self.noisy, self.t, tokens)
        return torch.mean((predicted - self.noise) ** 2)

    def __call__(self, token: Tensor) -> float:
        with torch.no_grad():
            return float(self.loss_tensor(token))


def evaluation_objective(model: Denoiser, images: Tensor, seed: int = 10_000) -> Callable:
    """A fixed, larger-sample loss for monitoring (PUTS range, 8 draws per image, not counted)."""
    objective = InversionObjective(model, images, timestep_range(True), seed=seed, repeats=8)
    return lambda token: objective(token)


def learn_token_backprop(
    model: Denoiser,
    images: Tensor,
    steps: int,
    lr: float = 1e-2,
    seed: int = 0,
    puts: bool = False,
    token0: Tensor | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
) -> tuple[Tensor, InversionObjective]:
    """Textual inversion by backpropagation on the float model (the baseline).

    Adam (betas 0.9/0.999, eps 1e-8) on the token only, the model frozen; timesteps uniform on
    ``[0, T)`` unless ``puts``. One forward and one backward pass per step. Adam is written out
    (the textbook update) rather than ``torch.optim.Adam``, whose import of ``torch._dynamo``
    adds ~70-80 MiB of RSS — the same choice as the ZO side, so peak-memory comparisons measure
    backpropagation, not an import. Returns the token and the objective (its
    ``forward_passes`` counts the forwards).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    objective = InversionObjective(model, images, timestep_range(puts), seed=seed)
    token = (model.initial_token() if token0 is None else token0).clone().requires_grad_(True)
    first, second = torch.zeros_like(token), torch.zeros_like(token)
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
    for step in range(steps):
        objective.resample(step)
        (grad,) = torch.autograd.grad(objective.loss_tensor(token), token)
        with torch.no_grad():
            first.mul_(beta1).add_(grad, alpha=1 - beta1)
            second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = (second / (1 - beta2 ** (step + 1))).sqrt_().add_(adam_eps)
            token.sub_(lr / (1 - beta1 ** (step + 1)) * first / denominator)
        if callback is not None:
            callback(step, token.detach())
    return token.detach().clone(), objective
