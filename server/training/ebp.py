"""Expectation Backpropagation trainer (binary weights) and its backprop baseline.

Soudry, Hubara, Meir, NeurIPS 2014. The forward pass is
:meth:`shared.methods.ebp.EBPNetwork.mean_field_forward`; this module adds the
backward pass and the parameter-free update (η = 1)::

    output:  G = 2 N(0; μ_u, σ²_u) / Φ(y μ_u / σ_u) / √(K+1),   δ = y
    hidden:  G = 2 N(0; μ_u, σ²_u) / √(K+1),                     δ_prev = (δ ⊙ G) M
    update:  h ← h + ½ (δ ⊙ G)ᵀ μ_v,prev      b ← b + ½ Σ_batch δ ⊙ G

The output ratio N/Φ is evaluated in log space (``log_ndtr``), which is exact
where the authors' code falls back to its asymptote −2·1[yμ<0]·μ/σ².

Protocol of the reference driver (RunMe.m): one hidden layer of 120, minibatch
10, 8-fold cross-validation, three passes over the training data (``Runs = 3``
one-epoch blocks, each continuing from the previous one), fields initialised
``h ~ U(−½, ½)·√(12 σ_w / K)`` with σ_w = 1, biases 0. The comparison lives in
``bench/hub/ebp.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

from server.training.base import ProgressFn, TrainResult, no_progress
from shared.methods.ebp import EBPNetwork, active_batch
from shared.methods.ebp_data import EBP_TASKS, EBPFeatures, load_ebp_task

#: passes over the training data in the reference driver (RunMe.m: ``Runs = 3`` blocks)
REFERENCE_PASSES = 3

#: BP baseline learning-rate sweep: 8 values log-spaced over 1e-5 … 1
BP_LEARNING_RATES: tuple[float, ...] = tuple(float(v) for v in np.logspace(-5, 0, 8))


# --------------------------------------------------------------------------- EBP


def init_ebp_network(layer_sizes: list[int], seed: int, sigma_w: float = 1.0) -> EBPNetwork:
    """Fields ``U(−½, ½)·√(12 σ_w / K)`` (variance σ_w/K), zero biases; sizes input first."""
    if len(layer_sizes) < 2 or layer_sizes[-1] != 1 or any(n <= 0 for n in layer_sizes):
        raise ValueError(
            f"layer_sizes must be positive and end with one output unit, got {layer_sizes}"
        )
    gen = torch.Generator().manual_seed(seed)
    fields, biases = [], []
    for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:], strict=True):
        uniform = torch.rand(n_out, n_in, generator=gen, dtype=torch.float64) - 0.5
        fields.append(uniform * math.sqrt(12 * sigma_w / n_in))
        biases.append(torch.zeros(n_out, dtype=torch.float64))
    return EBPNetwork(fields, biases)


@torch.no_grad()
def ebp_update(
    net: EBPNetwork, x: torch.Tensor, y: torch.Tensor, columns: torch.Tensor | None = None
) -> None:
    """One EBP step on a minibatch (in place). ``x`` ``[B, A]`` float64, ``y`` ``[B]`` ±1."""
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must be [{x.shape[0]}], got {tuple(y.shape)}")
    mean_us, var_us, mean_vs = net.mean_field_forward(x, columns)
    delta = y.to(torch.float64)[:, None]
    for k in range(len(net.fields) - 1, -1, -1):
        mean_u, var_u = mean_us[k], var_us[k]
        scale = math.sqrt(net.fields[k].shape[1] + 1)
        log_density = -0.5 * torch.log(2 * math.pi * var_u) - mean_u**2 / (2 * var_u)
        if k == len(net.fields) - 1:
            log_cdf = torch.special.log_ndtr(delta * mean_u / var_u.sqrt())
            gain = 2 * torch.exp(log_density - log_cdf) / scale
        else:
            gain = 2 * torch.exp(log_density) / scale
        signal = delta * gain  # δ ⊙ G, [B, n_out]
        cols = columns if (k == 0 and columns is not None) else slice(None)
        if k > 0:
            delta = signal @ net.means[k]  # uses the pre-update means
        net.fields[k][:, cols] += 0.5 * signal.T @ mean_vs[k]
        net.means[k][:, cols] = torch.tanh(net.fields[k][:, cols])
        net.biases[k] += 0.5 * signal.sum(dim=0)


def train_ebp_epoch(
    net: EBPNetwork,
    x: EBPFeatures,
    y: np.ndarray,
    batch_size: int,
    seed: int,
    progress: ProgressFn = no_progress,
) -> None:
    """One online epoch in a seeded random order, minibatches of ``batch_size``."""
    order = np.random.default_rng(seed).permutation(x.shape[0])
    n_batches = math.ceil(len(order) / batch_size)
    for i, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start : start + batch_size]
        xb, columns = active_batch(x[idx])
        ebp_update(net, xb, torch.from_numpy(y[idx]), columns)
        if i % 50 == 0:
            progress(i / n_batches, f"EBP batch {i}/{n_batches}")


# --------------------------------------------------------------------------- BP baseline


def train_bp_passes(
    x: EBPFeatures,
    y: np.ndarray,
    hidden: int,
    lr: float,
    batch_size: int,
    seed: int,
    passes: int = 1,
) -> Iterator[list[torch.Tensor]]:
    """Real-weight baseline, yielding ``[W1 [hidden, K], b1, W2 [1, hidden], b2]`` after each pass.

    tanh hidden layer, linear output, logistic loss (minibatch mean), plain SGD,
    PyTorch's default ``nn.Linear`` init (U(±1/√fan_in)). Pass ``p`` visits the
    data in the order seeded by ``seed + 1000 p`` (so pass 0 is the one-pass
    run). Only the active input columns of a sparse batch take part (exact for
    plain SGD).
    """
    torch.manual_seed(seed)
    first, second = torch.nn.Linear(x.shape[1], hidden), torch.nn.Linear(hidden, 1)
    w1, b1 = first.weight.detach().double(), first.bias.detach().double()
    w2, b2 = second.weight.detach().double(), second.bias.detach().double()
    for p in range(passes):
        order = np.random.default_rng(seed + 1000 * p).permutation(x.shape[0])
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb, columns = active_batch(x[idx])
            yb = torch.from_numpy(y[idx]).double()
            w1_active = (w1 if columns is None else w1[:, columns]).clone().requires_grad_(True)
            params = [
                w1_active,
                b1.requires_grad_(True),
                w2.requires_grad_(True),
                b2.requires_grad_(True),
            ]
            out = (torch.tanh(xb @ w1_active.T + b1) @ w2.T + b2)[:, 0]
            loss = torch.nn.functional.softplus(-yb * out).mean()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                new_w1 = w1_active - lr * grads[0]
                if columns is None:
                    w1 = new_w1
                else:
                    w1[:, columns] = new_w1
                b1, w2, b2 = (
                    q.detach() - lr * g for q, g in zip(params[1:], grads[1:], strict=True)
                )
        yield [w1.clone(), b1.clone(), w2.clone(), b2.clone()]


def train_bp_epoch(
    x: EBPFeatures, y: np.ndarray, hidden: int, lr: float, batch_size: int, seed: int
) -> list[torch.Tensor]:
    """One SGD pass of the BP baseline (see :func:`train_bp_passes`)."""
    return next(train_bp_passes(x, y, hidden, lr, batch_size, seed, passes=1))


def bp_predict(params: list[torch.Tensor], x: EBPFeatures, batch_size: int = 64) -> np.ndarray:
    """±1 predictions of the BP baseline."""
    w1, b1, w2, b2 = params
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], batch_size):
        xb, columns = active_batch(x[start : start + batch_size])
        w = w1 if columns is None else w1[:, columns]
        score = (torch.tanh(xb @ w.T + b1) @ w2.T + b2)[:, 0]
        out[start : start + len(score)] = np.where(score.numpy() >= 0, 1, -1)
    return out


def select_bp_learning_rates(
    x: EBPFeatures, y: np.ndarray, hidden: int, batch_size: int, seed: int, passes: int = 1
) -> tuple[list[float], list[dict[str, float]]]:
    """Best constant LR for each number of passes 1 … ``passes``, on a validation part.

    A stratified 1/8 of the training fold (seeded) is held out; for each LR in
    :data:`BP_LEARNING_RATES` the baseline trains ``passes`` passes on the other
    7/8 and its validation error is measured after every pass; for each pass
    count the lowest error wins (ties: the smaller LR). Returns the chosen LRs
    and the validation errors, both indexed by ``passes − 1``.
    """
    split = StratifiedShuffleSplit(n_splits=1, test_size=1 / 8, random_state=seed)
    fit_idx, val_idx = next(split.split(np.zeros(len(y)), y))
    errors: list[dict[str, float]] = [{} for _ in range(passes)]
    for lr in BP_LEARNING_RATES:
        runs = train_bp_passes(x[fit_idx], y[fit_idx], hidden, lr, batch_size, seed, passes)
        for p, params in enumerate(runs):
            errors[p][f"{lr:.3g}"] = float((bp_predict(params, x[val_idx]) != y[val_idx]).mean())
    best = [min(BP_LEARNING_RATES, key=lambda lr, e=e: e[f"{lr:.3g}"]) for e in errors]
    return best, errors


def select_bp_learning_rate(
    x: EBPFeatures, y: np.ndarray, hidden: int, batch_size: int, seed: int
) -> tuple[float, dict[str, float]]:
    """Best constant LR for one pass (see :func:`select_bp_learning_rates`)."""
    best, errors = select_bp_learning_rates(x, y, hidden, batch_size, seed, passes=1)
    return best[0], errors[0]


# --------------------------------------------------------------------------- trainer


class EBPConfig(BaseModel):
    """Train EBP on one task, testing on one fold of the 8-fold split."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field("reuters_I654_I65", description=f"one of {', '.join(EBP_TASKS)}")
    hidden_units: int = Field(120, gt=0)
    batch_size: int = Field(10, gt=0)
    epochs: int = Field(
        REFERENCE_PASSES, gt=0, description="passes over the data; the reference driver runs 3"
    )
    folds: int = Field(8, ge=2)
    test_fold: int = Field(0, ge=0)
    sigma_w: float = Field(1.0, gt=0)
    seed: int = 0
    data_dir: str | None = None

    def model_post_init(self, _context: Any) -> None:
        if self.task not in EBP_TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(EBP_TASKS)}")
        if self.test_fold >= self.folds:
            raise ValueError(f"test_fold must be < folds ({self.folds}), got {self.test_fold}")


def fold_indices(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, shuffled k-fold (train, test) index pairs."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def error_rate(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of wrong ±1 predictions."""
    return float((predictions != labels).mean())


class EBPTrainer:
    """Registry trainer ``"ebp"``: ``epochs`` passes of EBP on a task's training folds."""

    name = "ebp"
    config_model: type[BaseModel] = EBPConfig

    def train(self, config: BaseModel, progress: ProgressFn = no_progress) -> TrainResult:
        """Train and report EBP-D / EBP-P test error on ``config.test_fold``."""
        if not isinstance(config, EBPConfig):
            config = EBPConfig.model_validate(config.model_dump())
        x, y = load_ebp_task(config.task, config.data_dir)
        train_idx, test_idx = fold_indices(y, config.folds, config.seed)[config.test_fold]
        net = init_ebp_network([x.shape[1], config.hidden_units, 1], config.seed, config.sigma_w)
        start = time.perf_counter()
        for epoch in range(config.epochs):
            train_ebp_epoch(
                net,
                x[train_idx],
                y[train_idx],
                config.batch_size,
                config.seed + epoch,
                lambda f, m, e=epoch: progress((e + f) / config.epochs, m),
            )
        seconds = time.perf_counter() - start
        progress(1.0, "EBP done")
        metrics = {
            "test_error_ebp_d": error_rate(net.predict(x[test_idx], "deterministic"), y[test_idx]),
            "test_error_ebp_p": error_rate(net.predict(x[test_idx], "probabilistic"), y[test_idx]),
            "train_seconds": seconds,
        }
        return TrainResult(state=net.state_dict(), metrics=metrics, config=config.model_dump())

    def load(self, state: dict[str, Any]) -> EBPNetwork:
        """Inference-ready :class:`EBPNetwork` (``predict(x, mode)``)."""
        return EBPNetwork.from_state(state)


TRAINER = EBPTrainer()
