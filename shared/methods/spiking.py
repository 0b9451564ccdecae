"""Leaky integrate-and-fire (LIF) neurons and spike encoders.

Every spike tensor here is time-major, ``[T, N, D]``: T time steps, N samples,
D neurons or input channels. A spike is ``1.0``, silence ``0.0``.

LIF dynamics, one step (discrete time, no units: currents and potentials are in
multiples of whatever the weights produce)::

    u_t = beta * u_{t-1} + I_t            # leaky integration, u_0 = 0
    s_t = H(u_t - threshold)              # spike when the membrane crosses threshold
    u_t <- u_t - s_t * threshold          # "subtract" reset (or u_t * (1 - s_t), "zero")

``H`` is the Heaviside step in the forward pass; its backward pass uses the
fast-sigmoid surrogate ``1 / (1 + slope * |u - threshold|)**2`` so a loss on the
spikes can still be differentiated (through time) inside one layer. The reset
term is detached from the graph, as is common practice, so gradients flow
through the leak and the input, not through the reset.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

Encoding = Literal["static", "poisson", "latency"]
#: input encodings understood by :func:`encode`
ENCODINGS: tuple[str, ...] = ("static", "poisson", "latency")
ResetMode = Literal["subtract", "zero"]


class _SurrogateSpike(torch.autograd.Function):
    """Heaviside forward, fast-sigmoid derivative backward."""

    @staticmethod
    def forward(ctx, centred: torch.Tensor, slope: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(centred)
        ctx.slope = slope
        return (centred >= 0).to(centred.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (centred,) = ctx.saved_tensors
        surrogate = 1.0 / (1.0 + ctx.slope * centred.abs()) ** 2
        return grad_out * surrogate, None


def spike(centred_membrane: torch.Tensor, slope: float = 5.0) -> torch.Tensor:
    """Spike where ``centred_membrane = u - threshold >= 0``; surrogate gradient backward."""
    return _SurrogateSpike.apply(centred_membrane, slope)


class LIFTrace(NamedTuple):
    """Output of :func:`lif_run`; both ``[T, N, D]``."""

    spikes: torch.Tensor
    #: membrane potential after the reset of that step (the state carried forward)
    membrane: torch.Tensor


def check_lif_params(beta: float, threshold: float, slope: float) -> None:
    """Raise ValueError unless 0 <= beta <= 1, threshold > 0 and slope > 0."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"LIF decay beta must lie in [0, 1], got {beta}")
    if threshold <= 0.0:
        raise ValueError(f"LIF threshold must be > 0, got {threshold}")
    if slope <= 0.0:
        raise ValueError(f"surrogate slope must be > 0, got {slope}")


def lif_run(
    currents: torch.Tensor,
    beta: float,
    threshold: float = 1.0,
    slope: float = 5.0,
    reset: ResetMode = "subtract",
) -> LIFTrace:
    """Run a layer of LIF neurons over ``currents`` ``[T, N, D]``; returns spikes and membrane."""
    if currents.dim() != 3:
        raise ValueError(
            f"currents must be time-major [T, N, D], got shape {tuple(currents.shape)}"
        )
    if reset not in ("subtract", "zero"):
        raise ValueError(f"reset must be 'subtract' or 'zero', got {reset!r}")
    check_lif_params(beta, threshold, slope)
    membrane = torch.zeros_like(currents[0])
    spikes_out, membrane_out = [], []
    for current in currents:
        membrane = beta * membrane + current
        spikes = spike(membrane - threshold, slope)
        fired = spikes.detach()
        if reset == "subtract":
            membrane = membrane - fired * threshold
        else:
            membrane = membrane * (1.0 - fired)
        spikes_out.append(spikes)
        membrane_out.append(membrane)
    return LIFTrace(torch.stack(spikes_out), torch.stack(membrane_out))


def _check_intensities(x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"intensities must be [N, D], got shape {tuple(x.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"intensities must lie in [0, 1], got range [{x.min():.3g}, {x.max():.3g}]"
        )


def static_encode(x: torch.Tensor, time_steps: int) -> torch.Tensor:
    """The same analogue input current at every step: ``[N, D] -> [T, N, D]``."""
    if x.dim() != 2:
        raise ValueError(f"inputs must be [N, D], got shape {tuple(x.shape)}")
    return x.unsqueeze(0).expand(time_steps, *x.shape).contiguous()


def poisson_encode(
    x: torch.Tensor, time_steps: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Poisson (Bernoulli-per-step) rate code: P(spike at each step) = intensity in [0, 1]."""
    _check_intensities(x)
    probs = x.unsqueeze(0).expand(time_steps, *x.shape)
    return torch.bernoulli(probs, generator=generator)


def latency_encode(x: torch.Tensor, time_steps: int) -> torch.Tensor:
    """Latency code: one spike per channel at step ``round((1 - x) * (T - 1))``; x = 0 is silent.

    Brighter inputs fire earlier; the code is deterministic.
    """
    _check_intensities(x)
    fire_step = torch.round((1.0 - x) * (time_steps - 1)).long()
    steps = torch.arange(time_steps).view(time_steps, 1, 1)
    return ((steps == fire_step.unsqueeze(0)) & (x.unsqueeze(0) > 0)).to(x.dtype)


def encode(
    x: torch.Tensor,
    encoding: str,
    time_steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Encode intensities ``[N, D]`` in [0, 1] as a ``[T, N, D]`` input by name (see ENCODINGS)."""
    if time_steps <= 0:
        raise ValueError(f"time_steps must be > 0, got {time_steps}")
    if encoding == "static":
        return static_encode(x, time_steps)
    if encoding == "poisson":
        return poisson_encode(x, time_steps, generator)
    if encoding == "latency":
        return latency_encode(x, time_steps)
    raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
