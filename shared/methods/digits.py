"""The digits split every spiking method trains on (sklearn 8x8 digits, fixed split)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from shared.methods.forward_forward import NUM_CLASSES, NUM_FEATURES


class DigitsSplit(NamedTuple):
    """Fixed digits split; features ``[N, 64]`` float32 in [0, 1], labels ``[N]`` int64."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def check_dataset(x: np.ndarray, y: np.ndarray, num_features: int = NUM_FEATURES) -> None:
    """Raise ValueError unless ``x`` is ``[N, num_features]`` in [0, 1] and ``y`` is ``[N]``."""
    if x.ndim != 2 or x.shape[1] != num_features:
        raise ValueError(f"features must be [N, {num_features}], got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be [N] with N = {x.shape[0]}, got shape {y.shape}")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError("features must lie in [0, 1]")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise ValueError(f"labels must lie in [0, {NUM_CLASSES - 1}]")


def load_digits_split(test_size: float = 0.25, random_state: int = 0) -> DigitsSplit:
    """sklearn digits scaled by 1/16 to [0, 1], stratified split (defaults: 25 % test, seed 0)."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    check_dataset(x, y)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=random_state
    )
    return DigitsSplit(x_train, x_test, y_train, y_test)
