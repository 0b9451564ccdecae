"""A spiking network with one recurrent hidden layer, and the inputs it reads.

Discrete time, current-based LIF neurons (time-major tensors ``[T, B, D]``)::

    P_j[t] = α P_j[t−1] + s_j[t]                       synaptic trace of neuron j
    v_i[t] = β v_i[t−1] + Σ_j w_ij P_j[t] + Σ_k r_ik P_k[t−1]
    s_i[t] = [v_i[t] ≥ ν],   v_i[t] ← v_i[t] − ν s_i[t]        (reset by subtraction)

The output layer (no recurrence) reads the hidden traces ``P_h[t]``; a sample
is classified by its output spike counts (ties: the larger summed membrane).
What each synapse contributes to the membrane, ignoring resets, is its
membrane-filtered trace ``K_j[t] = β K_j[t−1] + P_j[t]`` (recurrent synapses
see ``K_h[t−1]``); summed over the postsynaptic spike times it is the
spike-train-level PSP ``e_{i|j} = Σ_t s_i[t] K_j[t]`` that ST-RSBP trains on.

Inputs from digits: ``rows`` presents the 8 rows of an 8x8 digit one after the
other (8 input channels, ``steps_per_row`` steps each, Bernoulli spikes with
probability = pixel intensity); ``poisson`` presents all 64 pixels for
``time_steps`` steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from shared.methods.spiking import poisson_encode, spike

TASKS: tuple[str, ...] = ("rows", "poisson")


def rows_encode(
    x: torch.Tensor, steps_per_row: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Digits ``[N, 64]`` in [0, 1] → spikes ``[8 · steps_per_row, N, 8]``, one row at a time."""
    if x.ndim != 2 or x.shape[1] != 64:
        raise ValueError(f"rows encoding needs 8x8 digits [N, 64], got {tuple(x.shape)}")
    if steps_per_row <= 0:
        raise ValueError(f"steps_per_row must be > 0, got {steps_per_row}")
    rows = x.reshape(-1, 8, 8).permute(1, 0, 2)  # [8 rows, N, 8 pixels]
    probs = rows.repeat_interleave(steps_per_row, dim=0)
    return torch.bernoulli(probs.clamp(0, 1), generator=generator)


def encode_task(
    x: torch.Tensor, task: str, time_steps: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Spike input ``[T, N, C]`` of ``task`` (``rows``: ``time_steps`` a multiple of 8)."""
    if task == "rows":
        if time_steps % 8:
            raise ValueError(f"rows task needs time_steps divisible by 8, got {time_steps}")
        return rows_encode(x, time_steps // 8, generator)
    if task == "poisson":
        return poisson_encode(x, time_steps, generator)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


class Trace(NamedTuple):
    """What one forward pass records (all time-major)."""

    hidden_spikes: torch.Tensor  # [T, B, H]
    output_spikes: torch.Tensor  # [T, B, O]
    input_kernel: torch.Tensor  # K_in[t], [T, B, I]
    hidden_kernel: torch.Tensor  # K_h[t], [T, B, H]
    hidden_kernel_prev: torch.Tensor  # K_h[t−1] as seen by recurrent synapses, [T, B, H]
    hidden_membrane: torch.Tensor  # before reset, [T, B, H]
    output_membrane: torch.Tensor  # before reset, [T, B, O]


class RecurrentSNN(torch.nn.Module):
    """Input → recurrent LIF hidden layer → LIF output; weights are plain parameters."""

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        n_out: int,
        beta: float = 0.9,
        alpha: float = 0.5,
        threshold: float = 1.0,
        slope: float = 5.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if min(n_in, n_hidden, n_out) <= 0:
            raise ValueError("layer sizes must be positive")
        if not (0 <= beta < 1 and 0 <= alpha < 1 and threshold > 0):
            raise ValueError("need 0 ≤ beta < 1, 0 ≤ alpha < 1 and threshold > 0")
        gen = torch.Generator().manual_seed(seed)
        self.w_in = torch.nn.Parameter(torch.randn(n_hidden, n_in, generator=gen) / n_in**0.5)
        self.w_rec = torch.nn.Parameter(
            torch.randn(n_hidden, n_hidden, generator=gen) * 0.5 / n_hidden**0.5
        )
        self.w_out = torch.nn.Parameter(torch.randn(n_out, n_hidden, generator=gen) / n_hidden**0.5)
        self.beta, self.alpha, self.threshold, self.slope = beta, alpha, threshold, slope

    def run(self, inputs: torch.Tensor) -> Trace:
        """Simulate ``inputs`` ``[T, B, I]``; differentiable through surrogate spikes."""
        if inputs.ndim != 3 or inputs.shape[2] != self.w_in.shape[1]:
            raise ValueError(
                f"inputs must be [T, B, {self.w_in.shape[1]}], got {tuple(inputs.shape)}"
            )
        steps, batch, _ = inputs.shape
        n_hidden, n_out = self.w_in.shape[0], self.w_out.shape[0]
        zeros = inputs.new_zeros
        p_in, p_h, p_h_prev = zeros(batch, inputs.shape[2]), zeros(batch, n_hidden), None
        k_in, k_h, k_h_prev = zeros(batch, inputs.shape[2]), zeros(batch, n_hidden), None
        v_h, v_o = zeros(batch, n_hidden), zeros(batch, n_out)
        record: dict[str, list[torch.Tensor]] = {name: [] for name in Trace._fields}
        p_h_prev, k_h_prev = zeros(batch, n_hidden), zeros(batch, n_hidden)
        for t in range(steps):
            p_in = self.alpha * p_in + inputs[t]
            k_in = self.beta * k_in + p_in
            v_h = self.beta * v_h + p_in @ self.w_in.T + p_h_prev @ self.w_rec.T
            s_h = spike(v_h - self.threshold, self.slope)
            record["hidden_membrane"].append(v_h)
            v_h = v_h - self.threshold * s_h.detach()
            p_h = self.alpha * p_h_prev + s_h
            k_h = self.beta * k_h_prev + p_h
            v_o = self.beta * v_o + p_h @ self.w_out.T
            s_o = spike(v_o - self.threshold, self.slope)
            record["output_membrane"].append(v_o)
            v_o = v_o - self.threshold * s_o.detach()
            record["hidden_spikes"].append(s_h)
            record["output_spikes"].append(s_o)
            record["input_kernel"].append(k_in)
            record["hidden_kernel"].append(k_h)
            record["hidden_kernel_prev"].append(k_h_prev)
            p_h_prev, k_h_prev = p_h, k_h
        return Trace(**{name: torch.stack(values) for name, values in record.items()})

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class ids ``[B]``: most output spikes; ties broken by summed membrane."""
        trace = self.run(inputs)
        counts = trace.output_spikes.sum(0)
        tie_break = torch.sigmoid(trace.output_membrane.sum(0) / inputs.shape[0])
        return (counts + 0.5 * tie_break).argmax(dim=1)

    def state(self) -> dict[str, Any]:
        """torch.save-able state for :meth:`from_state`."""
        return {
            "weights": {k: v.detach().clone() for k, v in self.state_dict().items()},
            "sizes": [self.w_in.shape[1], self.w_in.shape[0], self.w_out.shape[0]],
            "beta": self.beta,
            "alpha": self.alpha,
            "threshold": self.threshold,
            "slope": self.slope,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RecurrentSNN:
        """Rebuild from :meth:`state` output."""
        missing = {"weights", "sizes", "beta", "alpha", "threshold"} - set(state)
        if missing:
            raise ValueError(f"recurrent SNN state lacks keys {sorted(missing)}")
        net = cls(
            *state["sizes"],
            beta=state["beta"],
            alpha=state["alpha"],
            threshold=state["threshold"],
            slope=state.get("slope", 5.0),
        )
        net.load_state_dict(state["weights"])
        return net
