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

from server.methods.base import ProgressFn, TrainResult, no_progress
from shared.methods.boolean_bp import (
    BooleanNetwork,
    bias_bits,
    check_binary,
    pack_bits,
)
from shared.methods.boolean_data import BOOLEAN_TASKS, load_boolean_task

Backend = Literal["packed", "float"]


def count_and_packed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``Σ_s a[s, p] AND b[s, q]`` for bool ``a [S, P]``, ``b [S, Q]`` → int ``[P, Q]``."""
    pa, pb = pack_bits(np.ascontiguousarray(a.T)), pack_bits(np.ascontiguousarray(b.T))
    return np.bitwise_count(pa[:, None, :] & pb[None, :, :]).sum(axis=-1, dtype=np.int64)


def count_and_float(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Same numbers as :func:`count_and_packed` by a float32 matrix product."""
    return np.rint(a.T.astype(np.float32) @ b.astype(np.float32)).astype(np.int64)


COUNT_KERNELS = {"packed": count_and_packed, "float": count_and_float}


def init_boolean_network(sizes: list[int], seed: int, backend: Backend = "packed") -> BooleanNetwork:
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
    if labels.shape != (n_samples,) or labels.min(initial=0) < 0 or labels.max(initial=0) >= n_classes:
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
        f_on, f_off = fragile & t, fragile & ~t
        wrong_one = count(t_on, a) + count(t_off, ~a)
        wrong_zero = count(t_on, ~a) + count(t_off, a)
        fragile_one = count(f_on, a) + count(f_off, ~a)
        fragile_zero = count(f_on, ~a) + count(f_off, a)
        drive = np.where(w, wrong_zero, wrong_one)
        veto = np.where(w, wrong_one + fragile_one, wrong_zero + fragile_zero)
        flip = (drive > veto + min_votes) & (rng.random(w.shape) < flip_rate)
        if k > 0:
            n_in = a.shape[1] - bias_bits(net.weights[k - 1].shape[0])
            a_hidden = a[:, :n_in]
            w_hidden = w[:, :n_in]
            # each wrong neuron j wants a_i = XNOR(w_ji, t_j); majority over wrong j
            votes_one = count(t_on.T, w_hidden) + count(t_off.T, ~w_hidden)
            votes_zero = wrong.sum(axis=1, keepdims=True) - votes_one
            desired = np.where(votes_one > votes_zero, True, np.where(votes_zero > votes_one, False, a_hidden))
            # minimal disturbance: ask only hidden units close to their threshold to change
            slack = np.abs(2 * agreements[k - 1] - net.weights[k - 1].shape[1])
            passed = slack <= hidden_margin
            t = np.where(passed, desired, a_hidden)
        net.weights[k] = w ^ flip
    return wrong_outputs
