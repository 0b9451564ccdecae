"""Which embedding channels a device encrypts: importance scores and top-α selection.

SecDOOD's selective encryption (reference code, restated): over a window of the
device's recent embeddings [W, D], each channel gets the Shannon entropy (nats)
of a 256-bin histogram of its values (bins span that channel's min..max in the
window) and its variance; importance = ½·softmax(entropies) + ½·softmax(variances).
The top α fraction of channels is encrypted and sent; the rest never leaves the
device. Random selection is kept as an ablation.

This lives in ``shared/`` because the cloud draws the same masks when it trains
the HyperNetwork ("as the device would draw them"); the device's rolling window
is in :mod:`device_client.channel_selection`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import softmax

HISTOGRAM_BINS = 256
DEFAULT_ALPHA = 0.25


def check_alpha(alpha: float) -> float:
    """α as a float; ValueError unless 0 < α ≤ 1."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.floating):
        raise TypeError(f"alpha must be a number in (0, 1], got {type(alpha).__name__}")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and 0.0 < alpha <= 1.0):
        raise ValueError(
            f"alpha must be in (0, 1] (the fraction of channels encrypted), got {alpha}"
        )
    return alpha


def channel_count(alpha: float, embed_dim: int) -> int:
    """How many channels α selects out of D: round(α·D), at least 1."""
    alpha = check_alpha(alpha)
    if embed_dim < 1:
        raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
    return max(1, min(embed_dim, int(math.floor(alpha * embed_dim + 0.5))))


def _check_window(window: np.ndarray) -> np.ndarray:
    window = np.asarray(window, dtype=np.float64)
    if window.ndim != 2 or window.shape[0] < 2 or window.shape[1] < 1:
        raise ValueError(
            f"window must be embeddings [W, D] with W >= 2 samples, got shape {list(window.shape)}"
        )
    if not np.isfinite(window).all():
        raise ValueError("window contains NaN or infinite values")
    return window


def histogram_entropy(window: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Per-channel entropy (nats) of a ``bins``-bin histogram over the window: [W, D] → [D].

    A constant channel puts everything in one bin and has entropy 0.
    """
    window = _check_window(window)
    low, high = window.min(axis=0), window.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    index = np.clip(np.floor((window - low) / span * bins), 0, bins - 1).astype(np.int64)
    n, d = window.shape
    counts = np.zeros((d, bins))
    np.add.at(counts, (np.broadcast_to(np.arange(d), (n, d)), index), 1.0)
    p = counts / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)


def channel_importance(window: np.ndarray) -> np.ndarray:
    """½·softmax(histogram entropies) + ½·softmax(variances) over channels: [W, D] → [D].

    Scores are positive and sum to 1; higher = more informative channel.
    """
    window = _check_window(window)
    return 0.5 * softmax(histogram_entropy(window)) + 0.5 * softmax(window.var(axis=0))


def top_alpha_channels(importance: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Indices (sorted ascending, int64) of the round(α·D) most important channels.

    Ties go to the lower channel index, so the choice is deterministic.
    """
    importance = np.asarray(importance, dtype=np.float64)
    if importance.ndim != 1 or importance.size == 0 or not np.isfinite(importance).all():
        raise ValueError(f"importance must be a finite vector [D], got shape {importance.shape}")
    k = channel_count(alpha, importance.size)
    ranked = np.argsort(-importance, kind="stable")
    return np.sort(ranked[:k]).astype(np.int64)


def random_channels(
    embed_dim: int, alpha: float = DEFAULT_ALPHA, rng: np.random.Generator | None = None
) -> np.ndarray:
    """The ablation: round(α·D) channels drawn uniformly without replacement, sorted."""
    k = channel_count(alpha, embed_dim)
    rng = rng if rng is not None else np.random.default_rng()
    return np.sort(rng.choice(embed_dim, size=k, replace=False)).astype(np.int64)


def check_indices(indices: np.ndarray | list[int], embed_dim: int) -> np.ndarray:
    """Selected channel indices as int64; ValueError unless strictly increasing in [0, D)."""
    array = np.asarray(indices)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"indices must be a non-empty 1-D list, got shape {list(array.shape)}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"indices must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.min() < 0 or array.max() >= embed_dim:
        raise ValueError(
            f"indices must be in [0, {embed_dim}), got min {array.min()} max {array.max()}"
        )
    if np.any(np.diff(array) <= 0):
        raise ValueError("indices must be strictly increasing (sorted, no duplicates)")
    return array
