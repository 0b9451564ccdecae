"""Boolean backpropagation: training a Boolean network with Boolean error signals only.

After "Practical Boolean Backpropagation" (arXiv 2505.03791). The paper's gate
is not public; ours is the XNOR–majority neuron of :mod:`shared.methods.boolean_bp`.
There are no latent real-valued weights and no floating-point gradient: the
state is the weight bits, and one training step on a batch is, per layer from
the top (``a`` the layer's biased input bits, ``y`` its output bits, ``t`` the
target bits, all Boolean)::

    wrong      = y XOR t                                   (error signal, per sample and neuron)
    fragile    = NOT wrong AND (agreements = ⌈n/2⌉)        (right by the smallest margin)
    help[j,i]  = popcount_s(wrong AND (t XOR a_i XOR NOT w_ji))   flipping w_ji fixes a vote
    hurt[j,i]  = popcount_s(fragile AND (t XNOR a_i XNOR w_ji))   flipping w_ji breaks a vote
    flip[j,i]  = (help > hurt + min_votes) AND rand_bit(flip_rate)
    target(a_i) = MAJ_j over wrong j of XNOR(w_ji, t_j)      (ties: keep a_i)

``w ← w XOR flip``; the lower layer then trains towards ``target(a)`` with the
weights as they were before this step. Popcount and comparisons of popcounts
are threshold gates, so every operation is a Boolean circuit; the random bits
only thin out the flips so a batch does not overshoot.

Counts over the batch and over neurons are computed by one of two kernels with
identical results: bit-packed ``uint64`` words with XOR/AND and
``np.bitwise_count`` ("packed"), or float32 0/1 matrix products ("float"), so
the two paths can be compared for speed on exactly the same computation.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from server.training.base import ProgressFn, TrainResult, no_progress
from shared.methods.boolean_bp import (
    BooleanNetwork,
    bias_bits,
    check_binary,
    pack_bits,
)
from shared.methods.boolean_data import BOOLEAN_TASKS, load_boolean_task

Backend = Literal["packed", "float"]


def count_agreeing_packed(on: np.ndarray, off: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``Σ_s (on[s,p] AND a[s,q]) OR (off[s,p] AND NOT a[s,q])`` → int ``[P, Q]`` (bit-packed).

    ``on``/``off`` are bool ``[S, P]`` and never both set; ``a`` bool ``[S, Q]``. Packed
    along the sample axis: one AND/OR word operation and a popcount per 64 samples.
    """
    p_on, p_off = pack_bits(np.ascontiguousarray(on.T)), pack_bits(np.ascontiguousarray(off.T))
    p_a, p_not_a = pack_bits(np.ascontiguousarray(a.T)), pack_bits(np.ascontiguousarray(~a.T))
    total = np.zeros((p_on.shape[0], p_a.shape[0]), dtype=np.int64)
    for k in range(p_on.shape[1]):  # one 64-sample word column at a time
        words = np.bitwise_and.outer(p_on[:, k], p_a[:, k])
        words |= np.bitwise_and.outer(p_off[:, k], p_not_a[:, k])
        total += np.bitwise_count(words)
    return total


def count_agreeing_float(on: np.ndarray, off: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Same numbers as :func:`count_agreeing_packed` by float32 matrix products."""
    af = a.astype(np.float32)
    counts = on.T.astype(np.float32) @ af + off.T.astype(np.float32) @ (1 - af)
    return np.rint(counts).astype(np.int64)


COUNT_KERNELS = {"packed": count_agreeing_packed, "float": count_agreeing_float}


def init_boolean_network(
    sizes: list[int], seed: int, backend: Backend = "packed"
) -> BooleanNetwork:
    """Uniformly random weight bits; ``sizes`` are layer widths, inputs first."""
    if len(sizes) < 2 or any(n <= 0 for n in sizes):
        raise ValueError(f"sizes must be ≥ 2 positive widths, got {sizes}")
    rng = np.random.default_rng(seed)
    weights = [
        rng.random((n_out, n_in + bias_bits(n_in))) < 0.5
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    return BooleanNetwork(weights, sizes[0], backend)


def output_targets(agreements: np.ndarray, fan_in: int, labels: np.ndarray) -> np.ndarray:
    """Target bits of the output layer: the true class fires; a wrong winner falls silent.

    Other outputs keep their bit (no error), so only the neurons that decide
    the popcount argmax are corrected.
    """
    labels = np.asarray(labels)
    n_samples, n_classes = agreements.shape
    if (
        labels.shape != (n_samples,)
        or labels.min(initial=0) < 0
        or labels.max(initial=0) >= n_classes
    ):
        raise ValueError(f"labels must be [{n_samples}] class ids in [0, {n_classes - 1}]")
    rows = np.arange(n_samples)
    winners = agreements.argmax(axis=1)
    t = 2 * agreements > fan_in
    t[rows, winners] &= winners == labels
    t[rows, labels] = True
    return t


def boolean_backprop_step(
    net: BooleanNetwork,
    x: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    flip_rate: float,
    min_votes: int = 0,
    margin: int = 1,
    hidden_margin: int = 3,
) -> int:
    """One Boolean-backprop step on a batch (in place); returns the number of wrong output bits.

    ``x`` bool ``[S, n_0]``, ``labels`` int ``[S]`` (one output neuron per class).
    """
    count = COUNT_KERNELS[net.backend]
    inputs, agreements = net.forward(x)
    t = output_targets(agreements[-1], net.weights[-1].shape[1], labels)
    wrong_outputs = 0
    for k in range(len(net.weights) - 1, -1, -1):
        w, a = net.weights[k], inputs[k]
        n = w.shape[1]
        y = 2 * agreements[k] > n
        wrong = y ^ t
        if k == len(net.weights) - 1:
            wrong_outputs = int(wrong.sum())
        fragile = ~wrong & (np.abs(2 * agreements[k] - n) <= margin)
        # a sample wants w_ji = XNOR(t, a_i) (then its vote agrees with t). Wrong samples
        # wanting the other value drive a flip; wrong and fragile samples content with the
        # current value veto it (flipping would break their vote).
        t_on, t_off = wrong & t, wrong & ~t
        # wanting w_ji = 1 means t == a_i; each counted sample wants exactly one value
        wrong_one = count(t_on, t_off, a)
        wrong_zero = wrong.sum(axis=0)[:, None] - wrong_one
        fragile_one = count(fragile & t, fragile & ~t, a)
        fragile_zero = fragile.sum(axis=0)[:, None] - fragile_one
        drive = np.where(w, wrong_zero, wrong_one)
        veto = np.where(w, wrong_one + fragile_one, wrong_zero + fragile_zero)
        flip = (drive > veto + min_votes) & (rng.random(w.shape) < flip_rate)
        if k > 0:
            n_in = a.shape[1] - bias_bits(net.weights[k - 1].shape[0])
            a_hidden = a[:, :n_in]
            w_hidden = w[:, :n_in]
            # each wrong neuron j wants a_i = XNOR(w_ji, t_j); majority over wrong j
            votes_one = count(t_on.T, t_off.T, w_hidden)
            votes_zero = wrong.sum(axis=1, keepdims=True) - votes_one
            desired = np.where(
                votes_one > votes_zero, True, np.where(votes_zero > votes_one, False, a_hidden)
            )
            # minimal disturbance: ask only hidden units close to their threshold to change
            slack = np.abs(2 * agreements[k - 1] - net.weights[k - 1].shape[1])
            passed = slack <= hidden_margin
            t = np.where(passed, desired, a_hidden)
        net.weights[k] = w ^ flip
    return wrong_outputs


# --------------------------------------------------------------------------- trainer


class BooleanBPConfig(BaseModel):
    """Train a Boolean network by Boolean backprop on one binary task."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field("digits", description=f"one of {', '.join(BOOLEAN_TASKS)}")
    hidden_sizes: list[int] = Field(default_factory=lambda: [128], min_length=1)
    epochs: int = Field(16, gt=0, description="upper bound; stops early once training is exact")
    batch_size: int = Field(32, gt=0)
    flip_rate: float = Field(
        0.1, gt=0, le=1, description="share of voted flips applied (in epoch 1 when annealed)"
    )
    margin: int = Field(5, ge=1, description="correct outputs within this slack veto flips")
    hidden_margin: int = Field(9, ge=1, description="hidden units within this slack get errors")
    anneal: bool = Field(True, description="divide flip_rate by the epoch number")
    backend: Backend = "packed"
    seed: int = 0

    def model_post_init(self, _context: Any) -> None:
        if self.task not in BOOLEAN_TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {BOOLEAN_TASKS}")
        if any(n <= 0 for n in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive, got {self.hidden_sizes}")


def accuracy(net: BooleanNetwork, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of correct class predictions."""
    return float((net.predict(x) == y).mean())


def train_boolean_network(
    config: BooleanBPConfig,
    x: np.ndarray,
    y: np.ndarray,
    classes: int,
    progress: ProgressFn = no_progress,
) -> tuple[BooleanNetwork, int]:
    """Boolean backprop on ``x`` bool ``[N, n]``, ``y`` ``[N]``; returns the net and epochs run."""
    x = check_binary(x, "training inputs")
    sizes = [x.shape[1], *config.hidden_sizes, classes]
    net = init_boolean_network(sizes, config.seed, config.backend)
    rng = np.random.default_rng(config.seed)
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(len(y))
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            boolean_backprop_step(
                net,
                x[idx],
                y[idx],
                rng,
                config.flip_rate / epoch if config.anneal else config.flip_rate,
                margin=config.margin,
                hidden_margin=config.hidden_margin,
            )
        train_acc = accuracy(net, x, y)
        progress(epoch / config.epochs, f"epoch {epoch}: train accuracy {train_acc:.3f}")
        if train_acc == 1.0:
            break
    return net, epoch


class BooleanBPTrainer:
    """Registry trainer ``"boolean_bp"``."""

    name = "boolean_bp"
    config_model: type[BaseModel] = BooleanBPConfig

    def train(self, config: BaseModel, progress: ProgressFn = no_progress) -> TrainResult:
        """Train on ``config.task``; metrics: train/test accuracy, epochs run, seconds."""
        if not isinstance(config, BooleanBPConfig):
            config = BooleanBPConfig.model_validate(config.model_dump())
        data = load_boolean_task(config.task)
        start = time.perf_counter()
        net, epochs_run = train_boolean_network(
            config, data.x_train, data.y_train, data.classes, progress
        )
        seconds = time.perf_counter() - start
        metrics = {
            "train_accuracy": accuracy(net, data.x_train, data.y_train),
            "test_accuracy": accuracy(net, data.x_test, data.y_test),
            "epochs_run": epochs_run,
            "train_seconds": seconds,
        }
        state = {**net.state_dict(), "task": config.task}
        return TrainResult(state=state, metrics=metrics, config=config.model_dump())

    def load(self, state: dict[str, Any]) -> BooleanNetwork:
        """Inference-ready :class:`BooleanNetwork` (``predict(x_bits)``)."""
        return BooleanNetwork.from_state(state)


TRAINER = BooleanBPTrainer()
