"""Personalise the int8 diffusion model to a new concept without backpropagation (ZOODiP).

Textual inversion by zeroth-order optimisation: the token vector ``v`` that conditions the
frozen int8 denoiser is learned from a few images of the concept with forward passes only.
Per step: fix the step's timesteps and noise (:class:`InversionObjective`), estimate the
gradient from ``n`` random Gaussian directions (one-sided, eps = 1e-3, ZOODiP's normaliser),
optionally project it with the subspace gradient (ring buffer of the last tau = 128 tokens,
PCA, drop the directions beyond 1 - nu of the variance, nu = 1e-3), take a ZO-Adam step.
Timesteps come from ``[0.5 T, 0.9 T)`` with Partial Uniform Timestep Sampling, from
``[0, T)`` without. The four combinations of SG and PUTS are ZOODiP's ablation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from device_client.subspace import SubspaceGradient
from device_client.zo import ZOAdam, ZOEstimator, zo_minimise
from shared.diffusion.denoiser import Denoiser
from shared.diffusion.inversion import InversionObjective, timestep_range


@dataclass(frozen=True)
class ZOInversionConfig:
    """Settings of ZO textual inversion (defaults: ZOODiP's)."""

    steps: int = 1000
    n_directions: int = 1
    eps: float = 1e-3
    lr: float = 1e-2
    subspace: bool = True
    tau: int = 128
    nu: float = 1e-3
    puts: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.n_directions not in (1, 2):
            raise ValueError(f"n_directions must be 1 or 2 (ZOODiP), got {self.n_directions}")


@dataclass
class ZOInversionResult:
    """The learned token and how it got there."""

    token: Tensor
    forward_passes: int
    #: ``(forward_passes, training loss)`` per step, from the estimator's own L(v)
    history: list[tuple[int, float]]
    #: ``(forward_passes, monitoring loss)`` every ``monitor_every`` steps (not counted)
    monitored: list[tuple[int, float]] = field(default_factory=list)
    d_eff: int | None = None
    config: dict = field(default_factory=dict)


def learn_token_zo(
    model: Denoiser,
    images: Tensor,
    config: ZOInversionConfig = ZOInversionConfig(),
    monitor: Callable[[Tensor], float] | None = None,
    monitor_every: int = 25,
    stop_below: float | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> ZOInversionResult:
    """Learn a token for ``images`` [N, 1, 16, 16] in [-1, 1] with forward passes of ``model``.

    ``monitor(token)`` (e.g. a fixed-draw loss) is recorded every ``monitor_every`` steps; with
    ``stop_below`` the run stops once it falls below that value (passes-to-target).
    ``progress(step, loss)`` is called after every step.
    """
    objective = InversionObjective(model, images, timestep_range(config.puts), seed=config.seed)
    estimator = ZOEstimator(n_directions=config.n_directions, eps=config.eps)
    optimizer = ZOAdam(lr=config.lr)
    subspace = SubspaceGradient(tau=config.tau, nu=config.nu) if config.subspace else None
    token0 = model.initial_token()
    monitored: list[tuple[int, float]] = []
    if monitor is not None:
        monitored.append((0, monitor(token0)))

    def after_step(step: int, token: Tensor, loss: float) -> bool:
        objective.resample(step + 1)  # the next step's timesteps and noise
        if progress is not None:
            progress(step, loss)
        if monitor is None or (step + 1) % monitor_every:
            return False
        value = monitor(token)
        monitored.append(((step + 1) * estimator.forward_passes_per_step, value))
        return stop_below is not None and value < stop_below

    token, history = zo_minimise(
        objective,
        token0,
        config.steps,
        estimator,
        optimizer,
        subspace=subspace,
        callback=after_step,
        seed=config.seed,
        monitor=False,
    )
    return ZOInversionResult(
        token=token,
        forward_passes=history[-1][0],
        history=history,
        monitored=monitored,
        d_eff=subspace.d_eff if subspace is not None else None,
        config=asdict(config),
    )


def sample_with_token(
    model: Denoiser, token: Tensor, n: int, steps: int = 100, seed: int = 0
) -> Tensor:
    """``n`` images [n, 1, 16, 16] in [-1, 1] generated with ``token`` [token_dim]."""
    from shared.diffusion.schedule import NoiseSchedule

    if n < 1:
        raise ValueError(f"number of samples must be >= 1, got {n}")
    tokens = token.reshape(1, -1).expand(n, -1)
    generator = torch.Generator().manual_seed(seed)
    return NoiseSchedule().sample(
        lambda x, t: model(x, t, tokens), (n, 1, 16, 16), steps=steps, generator=generator
    )
