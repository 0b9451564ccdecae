"""Binary tasks for Boolean networks: truth tables and binarised digits.

- ``parity3``: XOR of 3 bits, the full truth table (8 rows) is both the
  training and the test set — the question is whether it is learned exactly.
- ``comparator4``: ``a > b`` for two 2-bit numbers (a 4-input-bit comparator, 16 rows).
- ``comparator8``: ``a > b`` for two 4-bit numbers (8 input bits, 256 rows).
- ``digits``: sklearn's 8x8 digits, pixel > 8 (of 16) → 1; stratified 75/25
  split (random_state 0, as the other digits methods); 10 classes.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

BOOLEAN_TASKS: tuple[str, ...] = ("parity3", "comparator4", "comparator8", "digits")


class BooleanTask(NamedTuple):
    """Bool inputs ``[N, n]``, int labels ``[N]``; ``classes`` 2 for Boolean functions."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int


def truth_table(n_bits: int) -> np.ndarray:
    """Every ``n_bits``-bit input, bool ``[2**n_bits, n_bits]`` (most significant bit first)."""
    return np.array(list(itertools.product((False, True), repeat=n_bits)), dtype=np.bool_)


def bits_to_int(bits: np.ndarray) -> np.ndarray:
    """Bool ``[N, n]`` (MSB first) → int ``[N]``."""
    return bits.astype(np.int64) @ (1 << np.arange(bits.shape[1] - 1, -1, -1))


def load_boolean_task(name: str) -> BooleanTask:
    """One of :data:`BOOLEAN_TASKS`; ValueError for another name."""
    if name == "parity3":
        x = truth_table(3)
        y = x.sum(axis=1) % 2
        return BooleanTask(x, y, x, y, 2)
    if name in ("comparator4", "comparator8"):
        half = 2 if name == "comparator4" else 4
        x = truth_table(2 * half)
        y = (bits_to_int(x[:, :half]) > bits_to_int(x[:, half:])).astype(np.int64)
        return BooleanTask(x, y, x, y, 2)
    if name == "digits":
        digits = load_digits()
        x = digits.data > 8
        y = digits.target.astype(np.int64)
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
        return BooleanTask(x_tr, y_tr, x_te, y_te, 10)
    raise ValueError(f"unknown Boolean task {name!r}; expected one of {', '.join(BOOLEAN_TASKS)}")
