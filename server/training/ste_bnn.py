"""Straight-through-estimator BNN: the baseline of Boolean backprop, same network.

The forward pass is exactly the XNOR–majority network of
:mod:`shared.methods.boolean_bp` written in ±1 arithmetic: a layer's
pre-activation ``s = sign(W) · a±`` (inputs and the constant-one bias inputs as
±1) equals ``2 · agreements − n``, and the unit fires when ``s > 0``. Training
keeps latent float weights and passes gradients straight through both signs
(clipped to |·| ≤ 1, Courbariaux et al. 2016); the output pre-activations
(scaled by 1/√n) feed a cross-entropy loss. The trained net is exported as
weight bits ``W > 0`` and evaluated by the same Boolean inference code.
"""

from __future__ import annotations

import numpy as np
import torch

from server.training.data_parallel import DataParallel
from shared.methods.boolean_bp import BooleanNetwork, bias_bits, check_binary, with_bias


class _SignSTE(torch.autograd.Function):
    """sign forward (0 → +1); gradient passed where |input| ≤ 1."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def _sign_ste(x: torch.Tensor) -> torch.Tensor:
    return _SignSTE.apply(x)


def _with_bias_pm(a: torch.Tensor) -> torch.Tensor:
    return torch.cat([a, torch.ones(a.shape[0], bias_bits(a.shape[1]))], dim=1)


def train_ste_bnn(
    x: np.ndarray,
    y: np.ndarray,
    sizes: list[int],
    epochs: int,
    lr: float = 1e-2,
    batch_size: int = 32,
    seed: int = 0,
) -> BooleanNetwork:
    """Adam on latent weights; returns the exported Boolean network (same inference code)."""
    bits = check_binary(x, "training inputs")
    torch.manual_seed(seed)
    latent = [
        torch.nn.Parameter(torch.empty(n_out, n_in + bias_bits(n_in)).uniform_(-1, 1))
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    optimiser = torch.optim.Adam(latent, lr=lr)
    parallel = DataParallel.from_environment()  # torchrun: each rank a share of every batch
    parallel.attach(optimiser)
    inputs = torch.from_numpy(bits.astype(np.float32) * 2 - 1)
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(labels), generator=gen).split(batch_size):
            idx = parallel.shard(idx)
            a = inputs[idx]
            for k, w in enumerate(latent):
                s = _with_bias_pm(a) @ _sign_ste(w).T
                a = (
                    _sign_ste(s / w.shape[1] ** 0.5)
                    if k < len(latent) - 1
                    else s / w.shape[1] ** 0.5
                )
            loss = torch.nn.functional.cross_entropy(a, labels[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                for w in latent:
                    w.clamp_(-1, 1)
    weights = [(w.detach() >= 0).numpy() for w in latent]
    return BooleanNetwork(weights, sizes[0])


__all__ = ["train_ste_bnn", "with_bias"]
