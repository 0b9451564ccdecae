"""Deep k-nearest-neighbour distance (KNN).

Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022.
https://arxiv.org/abs/2204.06507

With ẑ = z / ||z||₂ and the bank {ẑ_i} of normalised ID training features,

    score(x) = k-th smallest over i of  (1 - ẑ·ẑ_i)        (cosine distance; higher = more OOD)

The paper uses the Euclidean distance between normalised vectors, ||ẑ - ẑ_i||² = 2(1 - ẑ·ẑ_i),
a monotone function of the cosine distance, so rankings and metrics are identical. k = 10.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shared.ood.base import Detector, Evidence, LinearHead, check_labels


class KNN(Detector):
    """k-th nearest-neighbour cosine distance to the ID training bank.

    Memory is bounded by chunking both queries and bank: at most
    ``query_chunk × bank_chunk`` similarities are held at once, plus a running top-k.

    Args:
        k: which neighbour (1-based) gives the score.
        query_chunk, bank_chunk: chunk sizes (rows).

    Attributes (after fit):
        bank_: float [M, D] L2-normalised training features.
    """

    name = "knn"
    needs_fit = True

    def __init__(self, k: int = 10, query_chunk: int = 1024, bank_chunk: int = 16384) -> None:
        super().__init__()
        for label, value in (("k", k), ("query_chunk", query_chunk), ("bank_chunk", bank_chunk)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"KNN {label} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"KNN {label} must be >= 1, got {value}")
        self.k, self.query_chunk, self.bank_chunk = k, query_chunk, bank_chunk
        self.bank_: torch.Tensor | None = None

    @torch.no_grad()
    def fit(self, train: Evidence, labels: torch.Tensor, head: LinearHead | None = None) -> KNN:
        train = self._check_evidence(train)
        check_labels(labels, len(train))
        if len(train) < self.k:
            raise ValueError(f"KNN needs at least k={self.k} training samples, got {len(train)}")
        self.bank_ = F.normalize(train.features, dim=1)
        self._fitted = True
        return self

    def _kth_largest_similarity(self, queries: torch.Tensor) -> torch.Tensor:
        """[n, D] normalised queries → [n] k-th largest cosine similarity to the bank."""
        assert self.bank_ is not None
        best = torch.full((queries.shape[0], 0), float("-inf"), dtype=queries.dtype)
        for start in range(0, self.bank_.shape[0], self.bank_chunk):
            similarities = queries @ self.bank_[start : start + self.bank_chunk].T
            merged = torch.cat([best, similarities], dim=1)
            best = merged.topk(min(self.k, merged.shape[1]), dim=1).values
        return best[:, self.k - 1]

    @torch.no_grad()
    def score(self, ev: Evidence) -> torch.Tensor:
        ev = self._check_evidence(ev)
        self._require_fitted()
        assert self.bank_ is not None
        if ev.features.shape[1] != self.bank_.shape[1]:
            raise ValueError(
                f"KNN: features have D={ev.features.shape[1]}, fitted on D={self.bank_.shape[1]}"
            )
        queries = F.normalize(ev.features, dim=1).to(self.bank_.dtype)
        kth = [
            self._kth_largest_similarity(queries[start : start + self.query_chunk])
            for start in range(0, queries.shape[0], self.query_chunk)
        ]
        return (1.0 - torch.cat(kth)).to(ev.features.dtype)

    def __repr__(self) -> str:
        return f"KNN(k={self.k})"
