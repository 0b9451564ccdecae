"""The device's choice of which embedding channels to encrypt and send.

A rolling window of the device's most recent embeddings feeds the SecDOOD
channel importance (:func:`shared.channel_importance.channel_importance`:
½·softmax(256-bin histogram entropies) + ½·softmax(variances)); the top α
fraction (default α = 0.25) is selected. ``method="random"`` is the ablation.
Only the selected channels are encrypted; the others never leave the device.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import numpy as np

from shared.channel_importance import (
    DEFAULT_ALPHA,
    channel_importance,
    check_alpha,
    random_channels,
    top_alpha_channels,
)

SelectionMethod = Literal["importance", "random"]
#: clips in the device's window (channel importance, the per-device Θ, its refinement):
#: chosen by the run-path sweep of ``bench/personal_threshold.py`` (validation devices only):
#: 96 beat 64 on 9 paired runs and lost 1 (sign test p = 0.02) with the refined head; on the
#: retrained base model with 5 EM iterations, 128 with q = 0.6 beat 96 with q = 0.5 on 17
#: runs and lost 5 (p = 0.02)
DEFAULT_WINDOW = 128


def select_channels(
    window: np.ndarray,
    alpha: float = DEFAULT_ALPHA,
    method: SelectionMethod = "importance",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Sorted indices of the channels to encrypt, from a window of embeddings [W, D]."""
    window = np.asarray(window, dtype=np.float64)
    if window.ndim != 2:
        raise ValueError(f"window must be embeddings [W, D], got shape {list(window.shape)}")
    if method == "importance":
        return top_alpha_channels(channel_importance(window), alpha)
    if method == "random":
        return random_channels(window.shape[1], alpha, rng)
    raise ValueError(f"method must be 'importance' or 'random', got {method!r}")


class ChannelSelector:
    """Keeps the last ``window`` embeddings and selects channels over them."""

    def __init__(
        self,
        embed_dim: int,
        alpha: float = DEFAULT_ALPHA,
        method: SelectionMethod = "importance",
        window: int = DEFAULT_WINDOW,
        seed: int | None = None,
    ) -> None:
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        if window < 2:
            raise ValueError(f"window must hold at least 2 embeddings, got {window}")
        if method not in ("importance", "random"):
            raise ValueError(f"method must be 'importance' or 'random', got {method!r}")
        self.embed_dim = embed_dim
        self.alpha = check_alpha(alpha)
        self.method: SelectionMethod = method
        self._recent: deque[np.ndarray] = deque(maxlen=window)
        self._rng = np.random.default_rng(seed)

    def observe(self, embeddings: np.ndarray) -> None:
        """Add embeddings [N, D] (or one [D]) to the window, oldest dropped first."""
        rows = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
        if rows.ndim != 2 or rows.shape[1] != self.embed_dim:
            raise ValueError(f"embeddings must be [N, {self.embed_dim}], got {list(rows.shape)}")
        if not np.isfinite(rows).all():
            raise ValueError("embeddings contain NaN or infinite values")
        self._recent.extend(rows)

    @property
    def window(self) -> np.ndarray:
        """The current window [W, D] (W ≤ the configured size)."""
        return np.stack(self._recent) if self._recent else np.empty((0, self.embed_dim))

    def __len__(self) -> int:
        return len(self._recent)

    def select(self) -> np.ndarray:
        """Indices to encrypt now; the importance method needs ≥ 2 embeddings in the window."""
        if self.method == "importance" and len(self._recent) < 2:
            raise ValueError("observe at least 2 embeddings before selecting channels")
        if self.method == "random":
            return random_channels(self.embed_dim, self.alpha, self._rng)
        return select_channels(self.window, self.alpha, "importance")
