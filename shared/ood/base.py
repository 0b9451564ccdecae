"""The shared detector interface: what a detector looks at and how it answers.

Convention used project-wide: a detector's ``score`` is an OOD score, **higher = more OOD**.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


def check_matrix(tensor: object, what: str) -> torch.Tensor:
    """Return ``tensor`` if it is a finite, non-empty, floating 2-D tensor, else raise.

    Raises TypeError for a non-tensor or non-floating tensor and ValueError for a wrong rank,
    an empty tensor or NaN/inf entries; the message names ``what`` and the expected form.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.dim() != 2:
        raise ValueError(f"{what} must be 2-D [N, dim], got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{what} must be non-empty, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{what} contains NaN or inf values; expected finite numbers")
    return tensor


def check_labels(labels: object, n_samples: int, num_classes: int | None = None) -> torch.Tensor:
    """Return ``labels`` as an int64 [N] tensor after checking it matches ``n_samples`` rows.

    Labels must be integer class indices in ``[0, num_classes)`` (upper bound checked only
    when ``num_classes`` is given).
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class indices, got {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {tuple(labels.shape)}")
    if labels.shape[0] != n_samples:
        raise ValueError(
            f"labels has {labels.shape[0]} entries but the evidence has {n_samples} samples"
        )
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"labels must be non-negative class indices, got min {int(labels.min())}")
    if num_classes is not None and labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"labels must be < num_classes={num_classes}, got max {int(labels.max())}")
    return labels.long()


@dataclass
class Evidence:
    """What a detector looks at for a batch of N samples.

    Attributes:
        features: float [N, D], the fused embedding z (penultimate features).
        logits: float [N, C], the classifier output for the same samples.

    Checked on construction: both 2-D, finite, same N.
    """

    features: torch.Tensor
    logits: torch.Tensor

    def __post_init__(self) -> None:
        check_matrix(self.features, "Evidence.features")
        check_matrix(self.logits, "Evidence.logits")
        if self.features.shape[0] != self.logits.shape[0]:
            raise ValueError(
                "Evidence.features and Evidence.logits must have the same number of rows N, "
                f"got {self.features.shape[0]} and {self.logits.shape[0]}"
            )

    def __len__(self) -> int:
        return self.features.shape[0]


@dataclass
class LinearHead:
    """The classifier that maps features to logits: ``logits = features @ weight.T + bias``.

    Attributes:
        weight: float [C, D].
        bias: float [C].
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def __post_init__(self) -> None:
        check_matrix(self.weight, "LinearHead.weight")
        if not isinstance(self.bias, torch.Tensor) or not self.bias.is_floating_point():
            raise TypeError("LinearHead.bias must be a floating-point torch.Tensor")
        if self.bias.shape != (self.weight.shape[0],):
            raise ValueError(
                f"LinearHead.bias must have shape [C]=({self.weight.shape[0]},) to match "
                f"weight [C, D]={tuple(self.weight.shape)}, got {tuple(self.bias.shape)}"
            )
        if not torch.isfinite(self.bias).all():
            raise ValueError("LinearHead.bias contains NaN or inf values; expected finite numbers")

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.weight.shape[1]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """[N, D] features → [N, C] logits, after checking D matches the head."""
        check_matrix(features, "features")
        if features.shape[1] != self.feature_dim:
            raise ValueError(
                f"features have D={features.shape[1]} but the head expects D={self.feature_dim}"
            )
        return features @ self.weight.T.to(features.dtype) + self.bias.to(features.dtype)


class Detector(ABC):
    """An OOD detector: optional ``fit`` on ID training evidence, then ``score``.

    ``score`` returns a float [N] tensor where **higher = more OOD**. Scores are detached
    (computed without autograd). Detectors that fit nothing inherit a no-op ``fit``.
    """

    name: str = "detector"
    #: Whether ``score`` needs a prior ``fit``; checked by :meth:`_require_fitted`.
    needs_fit: bool = False

    def __init__(self) -> None:
        self._fitted = False

    def fit(
        self, train: Evidence, labels: torch.Tensor, head: LinearHead | None = None
    ) -> Detector:
        """Fit on ID training evidence; a no-op here, returns ``self``."""
        self._check_evidence(train)
        check_labels(labels, len(train))
        self._fitted = True
        return self

    @abstractmethod
    def score(self, ev: Evidence) -> torch.Tensor:
        """OOD score, float [N]; higher = more OOD."""

    def _check_evidence(self, ev: object) -> Evidence:
        if not isinstance(ev, Evidence):
            raise TypeError(f"{self.name}: expected an Evidence, got {type(ev).__name__}")
        return ev

    def _require_fitted(self) -> None:
        if self.needs_fit and not self._fitted:
            raise RuntimeError(
                f"{self.name}: score() called before fit(); call "
                "fit(train_evidence, labels, head) on ID training data first"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
