"""LACTOSE: one parameter set per interval of a conditioning input, chosen outside the graph.

After arXiv 2502.15829. The range of a conditioning value ``c`` is cut at
``boundaries b_0 < b_1 < … < b_K`` into K intervals; interval k is
``[b_k, b_{k+1})`` and the last one also holds its top end ``b_K``, so a value
exactly on an inner boundary belongs to the interval that starts there and
every value of ``[b_0, b_K]`` has exactly one interval (values outside, or NaN,
are an error). Each interval owns a full set of weights of the same topology;
a sample is run through its interval's set only, so gradients reach only that
set. Batches are grouped by interval: one batched pass per interval present.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def check_boundaries(boundaries: list[float] | torch.Tensor) -> torch.Tensor:
    """Boundaries as a float64 tensor; ValueError unless ≥ 2, finite and strictly increasing."""
    b = torch.as_tensor(boundaries, dtype=torch.float64)
    if b.ndim != 1 or b.numel() < 2:
        raise ValueError(f"need at least two boundaries (one interval), got {b.tolist()}")
    if not torch.isfinite(b).all():
        raise ValueError(f"boundaries must be finite, got {b.tolist()}")
    gaps = b[1:] - b[:-1]
    if (gaps <= 0).any():
        k = int((gaps <= 0).nonzero()[0])
        raise ValueError(
            f"boundaries must be strictly increasing: b[{k}] = {b[k].item()} ≥ "
            f"b[{k + 1}] = {b[k + 1].item()} leaves interval {k} empty"
        )
    return b


def interval_index(c: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """Interval of every value of ``c`` ``[B]`` → long ``[B]``; exact boundaries go right."""
    c64 = c.detach().to(torch.float64)
    if torch.isnan(c64).any():
        raise ValueError("conditioning values must not be NaN")
    low, high = boundaries[0].item(), boundaries[-1].item()
    outside = (c64 < low) | (c64 > high)
    if outside.any():
        bad = c64[outside][:3].tolist()
        raise ValueError(f"conditioning values {bad} lie outside [{low}, {high}]")
    return torch.bucketize(c64, boundaries[1:-1], right=True)


def mlp_sizes(n_in: int, hidden: list[int], n_out: int) -> list[int]:
    """Layer widths, inputs first."""
    return [n_in, *hidden, n_out]


def mlp_parameter_count(sizes: list[int]) -> int:
    """Weights and biases of a plain MLP with these widths."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


class IntervalMLP(torch.nn.Module):
    """K MLPs of identical topology (tanh hidden), stacked: ``weights[l]`` is ``[K, out, in]``."""

    def __init__(self, boundaries: list[float], sizes: list[int], seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("boundaries", check_boundaries(boundaries))
        if len(sizes) < 2 or any(n <= 0 for n in sizes):
            raise ValueError(f"sizes must be ≥ 2 positive widths, got {sizes}")
        self.sizes = list(sizes)
        k = self.boundaries.numel() - 1
        gen = torch.Generator().manual_seed(seed)
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1 / math.sqrt(n_in)
            self.weights.append(
                torch.nn.Parameter((torch.rand(k, n_out, n_in, generator=gen) * 2 - 1) * bound)
            )
            self.biases.append(
                torch.nn.Parameter((torch.rand(k, n_out, generator=gen) * 2 - 1) * bound)
            )

    @property
    def n_intervals(self) -> int:
        """K."""
        return self.boundaries.numel() - 1

    def parameter_count(self) -> int:
        """All K sets together."""
        return sum(p.numel() for p in self.parameters())

    def forward_set(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Run parameter set ``k`` on ``x`` ``[B, n_in]``."""
        h = x
        last = len(self.weights) - 1
        for layer, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w[k].T + b[k]
            if layer < last:
                h = torch.tanh(h)
        return h

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, n_in]``, conditioning ``c`` ``[B]`` → ``[B, n_out]``, grouped by interval."""
        if x.ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"inputs must be [batch, {self.sizes[0]}], got {tuple(x.shape)}")
        if c.shape != (x.shape[0],):
            raise ValueError(f"conditioning must be [{x.shape[0]}], got {tuple(c.shape)}")
        index = interval_index(c, self.boundaries)
        out = x.new_empty(x.shape[0], self.sizes[-1])
        for k in torch.unique(index).tolist():
            rows = (index == k).nonzero(as_tuple=True)[0]
            out[rows] = self.forward_set(k, x[rows])
        return out

    def state(self) -> dict[str, Any]:
        """torch.save-able state for :meth:`from_state`."""
        return {
            "boundaries": self.boundaries.tolist(),
            "sizes": self.sizes,
            "weights": {k: v.detach().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> IntervalMLP:
        """Rebuild from :meth:`state` output."""
        missing = {"boundaries", "sizes", "weights"} - set(state)
        if missing:
            raise ValueError(f"LACTOSE state lacks keys {sorted(missing)}")
        net = cls(state["boundaries"], state["sizes"])
        net.load_state_dict(state["weights"])
        return net
