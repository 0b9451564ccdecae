"""ST-RSBP: spike-train-level backprop for a recurrent spiking network, and its BPTT baseline.

Zhang & Li, "Spike-Train Level Backpropagation for Training Deep Recurrent
Spiking Neural Networks", NeurIPS 2019. The network and the spike-train-level
PSPs ``e_{i|j}`` are defined in :mod:`shared.methods.st_rsbp`. The rule works on
whole spike trains: with the spike-train-level activation ``a_i = Σ_j w_ij e_{i|j}``
and the firing count ``o_i`` proportional to it (slope ``g_i = o_i / a_i``, measured
per sample — the paper's ``1/ν`` holds only when resets are part of ``a``)::

    loss      L = ½ Σ_k (o_k − y_k)²                  (y: target counts per class)
    output    δ_k = (o_k − y_k) g_k,                  ∂L/∂w_kh = δ_k e_{k|h}
    hidden    δ_h = c_h (Σ_k δ_k w_kh e_{k|h} + Σ_m δ_m r_mh e_{m|h}),  c_h = g_h / o_h = 1 / a_h
              ∂L/∂w_hi = δ_h e_{h|i},                 ∂L/∂r_hm = δ_h e_{h|m}

using ``∂e_{i|j}/∂o_j ≈ e_{i|j} / o_j`` (activations clamped below at ν). The
hidden errors appear on both sides (the recurrent term), so they are found by
solving the linear system
``(I − diag(c) Bᵀ) δ_h = diag(c) Aᵀ δ_out`` per sample — the recurrence is
handled at spike-train level, never unrolled in time. A silent neuron is
treated as if it fired once at its membrane's peak (so ``o ≥ 1`` in ``c`` and
its PSPs are taken there); the paper leaves silent neurons without gradient.

``bptt_rsnn`` trains the same network on the same loss by backpropagation
through time with the fast-sigmoid surrogate gradient.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from server.training.base import ProgressFn, TrainResult, no_progress
from server.training.data_parallel import DataParallel
from shared.methods.digits import load_digits_split
from shared.methods.st_rsbp import TASKS, RecurrentSNN, encode_task

Rule = Literal["st_rsbp", "bptt"]


def effective_spikes(spikes: torch.Tensor, membrane: torch.Tensor) -> torch.Tensor:
    """Spikes ``[T, B, D]``, with one spike at the membrane peak for neurons that never fired."""
    silent = spikes.sum(0) == 0
    peak = torch.nn.functional.one_hot(membrane.argmax(0), spikes.shape[0]).permute(2, 0, 1)
    return torch.where(silent[None], peak.to(spikes.dtype), spikes)


def count_targets(labels: torch.Tensor, n_classes: int, high: float, low: float) -> torch.Tensor:
    """Target spike counts ``[B, C]``: ``high`` for the label, ``low`` elsewhere."""
    return low + (high - low) * torch.nn.functional.one_hot(labels, n_classes).float()


@torch.no_grad()
def st_rsbp_gradients(
    net: RecurrentSNN, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor], int]:
    """Loss, spike-train-level gradients of every weight, and bytes kept for the backward pass."""
    trace = net.run(inputs)
    nu = net.threshold
    counts_out = trace.output_spikes.sum(0)
    eff_out = effective_spikes(trace.output_spikes, trace.output_membrane)
    eff_hidden = effective_spikes(trace.hidden_spikes, trace.hidden_membrane)
    e_out_hidden = torch.einsum("tbo,tbh->boh", eff_out, trace.hidden_kernel)
    e_hidden_in = torch.einsum("tbh,tbi->bhi", eff_hidden, trace.input_kernel)
    e_hidden_rec = torch.einsum("tbh,tbk->bhk", eff_hidden, trace.hidden_kernel_prev)
    batch = inputs.shape[1]

    # spike-train-level activations a = Σ_j w_ij e_{i|j}; slope ∂o/∂a taken as o / a
    act_out = (net.w_out[None] * e_out_hidden).sum(2)
    act_hidden = (net.w_in[None] * e_hidden_in).sum(2) + (net.w_rec[None] * e_hidden_rec).sum(2)
    slope_out = counts_out.clamp(min=1) / act_out.clamp(min=nu)
    delta_out = (counts_out - targets) * slope_out
    c = 1.0 / act_hidden.clamp(min=nu)  # (o_h / a_h) · (1 / o_h)
    drive = c * torch.einsum("bo,boh->bh", delta_out, net.w_out[None] * e_out_hidden)
    recurrent = c[:, :, None] * (net.w_rec[None] * e_hidden_rec).transpose(1, 2)
    system = torch.eye(recurrent.shape[1]).expand_as(recurrent) - recurrent
    delta_hidden, info = torch.linalg.solve_ex(system, drive)
    # a singular system (rare) falls back to the feed-forward part of the error
    delta_hidden = torch.where((info != 0)[:, None], drive, delta_hidden)

    grads = {
        "w_out": torch.einsum("bo,boh->oh", delta_out, e_out_hidden) / batch,
        "w_in": torch.einsum("bh,bhi->hi", delta_hidden, e_hidden_in) / batch,
        "w_rec": torch.einsum("bh,bhk->hk", delta_hidden, e_hidden_rec) / batch,
    }
    kept = [*trace, e_out_hidden, e_hidden_in, e_hidden_rec]
    kept_bytes = sum(t.numel() * t.element_size() for t in kept)
    loss = 0.5 * float(((counts_out - targets) ** 2).sum(1).mean())
    return loss, grads, kept_bytes


def bptt_gradients(
    net: RecurrentSNN, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor], int]:
    """Same loss by backpropagation through time; bytes = tensors autograd saved for backward."""
    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        counts_out = net.run(inputs).output_spikes.sum(0)
        loss = 0.5 * ((counts_out - targets) ** 2).sum(1).mean()
    params = {"w_in": net.w_in, "w_rec": net.w_rec, "w_out": net.w_out}
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
    return float(loss.detach()), grads, saved[0]


GRADIENTS: dict[str, Callable[..., tuple[float, dict[str, torch.Tensor], int]]] = {
    "st_rsbp": st_rsbp_gradients,
    "bptt": bptt_gradients,
}


class RSNNConfig(BaseModel):
    """Recurrent SNN on a spike-coded digits task (see :mod:`shared.methods.st_rsbp`)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field("rows", description=f"one of {', '.join(TASKS)}")
    hidden: int = Field(100, gt=0)
    time_steps: int = Field(32, gt=0, description="rows: 8 rows × time_steps/8 steps each")
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(2e-3, gt=0, description="Adam step size")
    beta: float = Field(0.9, ge=0, lt=1, description="membrane decay per step")
    alpha: float = Field(0.5, ge=0, lt=1, description="synaptic trace decay per step")
    threshold: float = Field(1.0, gt=0)
    target_high: float = Field(0.5, gt=0, le=1, description="label's target count / T")
    target_low: float = Field(0.1, ge=0, le=1, description="other classes' target count / T")
    seed: int = 0

    def model_post_init(self, _context: Any) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.task == "rows" and self.time_steps % 8:
            raise ValueError(f"rows task needs time_steps divisible by 8, got {self.time_steps}")
        if self.target_low >= self.target_high:
            raise ValueError("target_low must be below target_high")


class RecurrentSNNTrainer:
    """``st_rsbp`` (spike-train level) or ``bptt_rsnn`` (through time): same net, same loss."""

    config_model: type[BaseModel] = RSNNConfig

    def __init__(self, name: str, rule: Rule) -> None:
        self.name, self.rule = name, rule

    def train(self, config: BaseModel, progress: ProgressFn = no_progress) -> TrainResult:
        """Train on digits; metrics: accuracy, seconds, peak bytes kept per training step."""
        if not isinstance(config, RSNNConfig):
            config = RSNNConfig.model_validate(config.model_dump())
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        data = load_digits_split()
        x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        n_in = 8 if config.task == "rows" else 64
        net = RecurrentSNN(
            n_in, config.hidden, 10, config.beta, config.alpha, config.threshold, seed=config.seed
        )
        optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
        parallel = DataParallel.from_environment()  # torchrun: each rank a share of every batch
        parallel.attach(optimiser)
        gradients = GRADIENTS[self.rule]
        high, low = config.target_high * config.time_steps, config.target_low * config.time_steps
        peak_bytes, losses = 0, []
        start = time.perf_counter()
        for epoch in range(config.epochs):
            encoded = encode_task(x_train, config.task, config.time_steps, gen)
            losses = []
            for idx in torch.randperm(len(y_train), generator=gen).split(config.batch_size):
                idx = parallel.shard(idx)
                targets = count_targets(y_train[idx], 10, high, low)
                loss, grads, kept = gradients(net, encoded[:, idx], targets)
                optimiser.zero_grad(set_to_none=True)
                for name, param in net.named_parameters():
                    param.grad = grads[name]
                optimiser.step()
                losses.append(loss)
                peak_bytes = max(peak_bytes, kept)
            progress((epoch + 1) / config.epochs, f"epoch {epoch + 1}: loss {np.mean(losses):.3f}")
        seconds = time.perf_counter() - start
        test_gen = torch.Generator().manual_seed(10_000 + config.seed)
        x_test = encode_task(
            torch.from_numpy(data.x_test), config.task, config.time_steps, test_gen
        )
        train_gen = torch.Generator().manual_seed(20_000 + config.seed)
        x_fit = encode_task(x_train, config.task, config.time_steps, train_gen)
        metrics = {
            "test_accuracy": float(
                (net.predict(x_test) == torch.from_numpy(data.y_test)).float().mean()
            ),
            "train_accuracy": float((net.predict(x_fit) == y_train).float().mean()),
            "train_seconds": seconds,
            "peak_backward_bytes_per_batch": peak_bytes,
            "final_loss": float(np.mean(losses)),
        }
        state = {**net.state(), "task": config.task, "time_steps": config.time_steps}
        return TrainResult(state=state, metrics=metrics, config=config.model_dump())

    def load(self, state: dict[str, Any]) -> RecurrentSNN:
        """Inference-ready :class:`RecurrentSNN` (``predict(spikes [T, B, I])``)."""
        return RecurrentSNN.from_state(state)


TRAINER = RecurrentSNNTrainer("st_rsbp", "st_rsbp")
BPTT_TRAINER = RecurrentSNNTrainer("bptt_rsnn", "bptt")
