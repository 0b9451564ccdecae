"""Predictive coding trainers: IL, Z-IL, Fa-Z-IL, and the backprop baseline.

Song, Lukasiewicz, Xu, Bogacz, "Can the Brain Do Backpropagation? — Exact
Implementation of Backpropagation in Predictive Coding Networks", NeurIPS 2020.

Paper indexing, used inside :func:`pc_learning_step`: node layer 0 is the output
(clamped to the target), layer L the input (clamped to the data);
``θˡ⁺¹`` maps layer l+1 to layer l::

    μˡ = f(xˡ⁺¹) θˡ⁺¹ᵀ      εˡ = xˡ − μˡ      F = Σ_l ½‖εˡ‖²
    inference:  Δxˡ = γ (−εˡ + f′(xˡ) ⊙ εˡ⁻¹ θˡ)        (hidden l = 1 … L−1)
    learning:   Δθˡ⁺¹ = α εˡᵀ f(xˡ⁺¹)                    (summed over the batch)

The learning *schedule* is what tells the variants apart:

- ``"end"`` (IL): run ``n`` inference steps, then update every layer once with
  the (near-)equilibrium errors.
- ``"zil"`` (Z-IL): hidden nodes start at their feed-forward values, γ = 1, and
  θˡ⁺¹ is updated only at inference step t = l (an external per-layer clock).
- ``"fa_zil"`` (Fa-Z-IL): no clock. Each weight layer carries a one-shot latch
  that fires the update of θˡ⁺¹ the first time its own error node εˡ becomes
  non-zero, i.e. the moment the error wave that starts at the output reaches
  it. With feed-forward init and γ = 1 that moment is exactly t = l, so it
  reproduces Z-IL (and hence backprop) with purely local information.

With feed-forward init, γ = 1 and the Z-IL/Fa-Z-IL schedule, the weight updates
equal SGD on ½‖target − output‖² (summed over the batch) up to float rounding.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from server.training.base import ProgressFn, TrainResult, no_progress
from server.training.data_parallel import ALONE, DataParallel
from shared.methods.predictive_coding import (
    Activation,
    PredictiveCodingMLP,
    activation_derivative,
    activation_fn,
    feedforward_nodes,
)

Schedule = Literal["end", "zil", "fa_zil"]
HiddenInit = Literal["feedforward", "zero", "random"]


# --------------------------------------------------------------------------- core rules


def init_weights(
    layer_sizes: list[int], seed: int, dtype: torch.dtype = torch.float64
) -> list[torch.Tensor]:
    """Gaussian init with std 1/√fan_in; ``weights[k]`` is ``[n_{k+1}, n_k]`` (forward order)."""
    if len(layer_sizes) < 2 or any(int(n) <= 0 for n in layer_sizes):
        raise ValueError(f"layer_sizes must be ≥ 2 positive sizes, got {layer_sizes}")
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n_out, n_in, generator=gen, dtype=dtype) / n_in**0.5
        for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:], strict=True)
    ]


def _check_batch(weights: list[torch.Tensor], x: torch.Tensor, target: torch.Tensor) -> None:
    n_in, n_out = weights[0].shape[1], weights[-1].shape[0]
    if x.ndim != 2 or x.shape[1] != n_in:
        raise ValueError(f"inputs must be [batch, {n_in}], got {tuple(x.shape)}")
    if target.shape != (x.shape[0], n_out):
        raise ValueError(f"targets must be [{x.shape[0]}, {n_out}], got {tuple(target.shape)}")


@torch.no_grad()
def pc_learning_step(
    weights: list[torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    activation: str,
    lr: float,
    inference_rate: float,
    inference_steps: int,
    schedule: Schedule,
    hidden_init: HiddenInit = "feedforward",
    error_tolerance: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One predictive-coding learning step on a batch; updates ``weights`` in place.

    ``weights`` are in forward order (``[n_{k+1}, n_k]``), ``x`` is ``[B, n_0]``,
    ``target`` ``[B, n_K]``. For ``"fa_zil"``, ``inference_steps`` is only a cap:
    inference stops once every layer's latch has fired; a latch fires when
    ``max|εˡ| > error_tolerance``. Returns the final energy and steps run.
    """
    _check_batch(weights, x, target)
    if schedule not in ("end", "zil", "fa_zil"):
        raise ValueError(f"unknown schedule {schedule!r}; expected 'end', 'zil' or 'fa_zil'")
    if inference_steps <= 0:
        raise ValueError(f"inference_steps must be positive, got {inference_steps}")
    f, f_prime = activation_fn(activation), activation_derivative(activation)
    theta = weights[::-1]  # theta[l] is θˡ⁺¹ (a view of the caller's tensor), [n_l, n_{l+1}]
    n_layers = len(theta)  # L
    feedforward = feedforward_nodes(weights, x, activation)[::-1]  # feedforward[0] = output

    nodes: list[torch.Tensor] = [target.to(x.dtype)]
    for layer in range(1, n_layers):
        if hidden_init == "feedforward":
            nodes.append(feedforward[layer].clone())
        elif hidden_init == "zero":
            nodes.append(torch.zeros_like(feedforward[layer]))
        elif hidden_init == "random":
            nodes.append(torch.randn(feedforward[layer].shape, generator=generator, dtype=x.dtype))
        else:
            raise ValueError(f"unknown hidden_init {hidden_init!r}")
    nodes.append(x)

    def errors() -> list[torch.Tensor]:
        return [nodes[layer] - f(nodes[layer + 1]) @ theta[layer].T for layer in range(n_layers)]

    def update_layer(layer: int, eps: torch.Tensor) -> None:
        theta[layer].add_(lr * eps.T @ f(nodes[layer + 1]))

    fired = [False] * n_layers
    steps_run = 0
    for step in range(inference_steps):
        eps = errors()
        # Node changes use the weights as they were at the start of this step.
        deltas = [
            inference_rate
            * (-eps[layer] + f_prime(nodes[layer]) * (eps[layer - 1] @ theta[layer - 1]))
            for layer in range(1, n_layers)
        ]
        if schedule == "zil" and step < n_layers:
            update_layer(step, eps[step])
        elif schedule == "fa_zil":
            for layer in range(n_layers):
                if not fired[layer] and float(eps[layer].abs().max()) > error_tolerance:
                    update_layer(layer, eps[layer])
                    fired[layer] = True
        for layer, delta in enumerate(deltas, start=1):
            nodes[layer] = nodes[layer] + delta
        steps_run = step + 1
        if schedule == "fa_zil" and all(fired):
            break
    if schedule == "end":
        eps = errors()
        for layer in range(n_layers):
            update_layer(layer, eps[layer])
    energy = 0.5 * sum(float((e**2).sum()) for e in errors())
    return {"energy": energy, "inference_steps": float(steps_run)}


def bp_learning_step(
    weights: list[torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    activation: str,
    lr: float,
    parallel: DataParallel = ALONE,
) -> dict[str, float]:
    """One SGD step of torch autograd on ½‖target − output‖² summed over the batch (in place).

    Under torchrun each rank holds a share of the batch and the gradients are summed."""
    _check_batch(weights, x, target)
    params = [w.detach().requires_grad_(True) for w in weights]
    output = feedforward_nodes(params, x, activation)[-1]
    loss = 0.5 * ((target - output) ** 2).sum()
    grads = parallel.summed(list(torch.autograd.grad(loss, params)))
    with torch.no_grad():
        for weight, grad in zip(weights, grads, strict=True):
            weight.sub_(lr * grad)
    return {"loss": float(loss.detach())}


# --------------------------------------------------------------------------- data


def load_digits_split(
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn digits, stratified 75/25 split (random_state 0), pixels scaled to [0, 1].

    Returns ``x_train [1347, 64]``, ``y_train [1347]`` (class ids), ``x_test [450, 64]``,
    ``y_test [450]``.
    """
    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    if x.ndim != 2 or x.shape[1] != 64 or x.shape[0] != y.shape[0]:
        raise ValueError(f"unexpected digits shape {x.shape} / {y.shape}; expected [N, 64] / [N]")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return (
        torch.tensor(x_tr, dtype=dtype),
        torch.tensor(y_tr),
        torch.tensor(x_te, dtype=dtype),
        torch.tensor(y_te),
    )


def one_hot(labels: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B]`` class ids → ``[B, n_classes]`` one-hot targets."""
    return torch.nn.functional.one_hot(labels, n_classes).to(dtype)


# --------------------------------------------------------------------------- trainers


class PCConfig(BaseModel):
    """Shared config of the predictive-coding family (trained on sklearn digits)."""

    model_config = ConfigDict(extra="forbid")

    layer_sizes: list[int] = Field(default_factory=lambda: [64, 64, 32, 10])
    activation: Activation = "tanh"
    lr: float = Field(0.01, gt=0, description="SGD learning rate α (loss summed over the batch)")
    batch_size: int = Field(16, gt=0)
    epochs: int = Field(20, gt=0)
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float64"

    @field_validator("layer_sizes")
    @classmethod
    def _sizes_fit_digits(cls, sizes: list[int]) -> list[int]:
        if len(sizes) < 2 or any(n <= 0 for n in sizes):
            raise ValueError("layer_sizes must hold at least two positive sizes")
        if sizes[0] != 64 or sizes[-1] != 10:
            raise ValueError("for digits the first size must be 64 (pixels), the last 10 (classes)")
        return sizes


class ILConfig(PCConfig):
    """IL adds the inference rate γ and the number of inference steps."""

    inference_rate: float = Field(0.1, gt=0, le=1)
    inference_steps: int = Field(20, gt=0)


class PredictiveCodingTrainer:
    """One trainer per learning rule; all share data, loop and artifact format."""

    def __init__(self, name: str, rule: Literal["bp", "end", "zil", "fa_zil"]) -> None:
        self.name = name
        self.rule = rule
        self.config_model: type[BaseModel] = ILConfig if rule == "end" else PCConfig

    def step(
        self,
        weights: list[torch.Tensor],
        x: torch.Tensor,
        target: torch.Tensor,
        config: PCConfig,
        parallel: DataParallel = ALONE,
    ) -> None:
        """One learning step of this trainer's rule on a batch (a rank's share under torchrun)."""
        if self.rule == "bp":
            bp_learning_step(
                weights, x, target, activation=config.activation, lr=config.lr, parallel=parallel
            )
            return
        n_layers = len(weights)
        if self.rule == "end":
            assert isinstance(config, ILConfig)
            rate, steps = config.inference_rate, config.inference_steps
        else:
            rate, steps = 1.0, n_layers
        pc_learning_step(
            weights,
            x,
            target,
            activation=config.activation,
            lr=config.lr,
            inference_rate=rate,
            inference_steps=steps,
            schedule=self.rule,
        )

    def train(self, config: BaseModel, progress: ProgressFn = no_progress) -> TrainResult:
        """Train on digits for ``config.epochs`` epochs; report train/test accuracy."""
        if not isinstance(config, self.config_model):
            config = self.config_model.model_validate(config.model_dump())
        assert isinstance(config, PCConfig)
        dtype = torch.float64 if config.dtype == "float64" else torch.float32
        x_tr, y_tr, x_te, y_te = load_digits_split(dtype)
        t_tr = one_hot(y_tr, 10, dtype)
        weights = init_weights(config.layer_sizes, config.seed, dtype)
        gen = torch.Generator().manual_seed(config.seed + 1)
        # Only backprop is data-parallel: IL/Z-IL/Fa-Z-IL change the weights inside the
        # inference loop, so every rank runs them whole (docs/scaling.md).
        parallel = DataParallel.from_environment() if self.rule == "bp" else ALONE
        start = time.perf_counter()
        for epoch in range(config.epochs):
            order = torch.randperm(len(x_tr), generator=gen)
            for begin in range(0, len(order), config.batch_size):
                idx = parallel.shard(order[begin : begin + config.batch_size])
                self.step(weights, x_tr[idx], t_tr[idx], config, parallel)
            progress((epoch + 1) / config.epochs, f"{self.name}: epoch {epoch + 1}/{config.epochs}")
        train_seconds = time.perf_counter() - start
        model = PredictiveCodingMLP(weights, config.activation)
        metrics = {
            "train_accuracy": float((model.forward(x_tr).argmax(1) == y_tr).double().mean()),
            "test_accuracy": float((model.forward(x_te).argmax(1) == y_te).double().mean()),
            "train_seconds": train_seconds,
        }
        return TrainResult(state=model.state_dict(), metrics=metrics, config=config.model_dump())

    def load(self, state: dict[str, Any]) -> PredictiveCodingMLP:
        """Inference-ready network from ``TrainResult.state``."""
        return PredictiveCodingMLP.from_state(state)


IL_TRAINER = PredictiveCodingTrainer("il", "end")
ZIL_TRAINER = PredictiveCodingTrainer("zil", "zil")
FA_ZIL_TRAINER = PredictiveCodingTrainer("fa_zil", "fa_zil")
BP_TRAINER = PredictiveCodingTrainer("pc_bp", "bp")
#: every registered name of this module
TRAINERS = (IL_TRAINER, ZIL_TRAINER, FA_ZIL_TRAINER, BP_TRAINER)
#: the flagship method of this module
TRAINER = ZIL_TRAINER
