"""Feature shaping: change the features, recompute the logits with the head, then score.

ReAct and ASH share this pattern; each subclass only says how features are shaped.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from shared.ood.base import Detector, Evidence, LinearHead, check_labels
from shared.ood.energy import Energy


class FeatureShapingDetector(Detector):
    """Shape features → logits = head(shaped) → ``base`` detector's score.

    Args:
        base: the detector applied to the shaped evidence; default :class:`Energy`. It is
            fitted on the shaped training evidence, so fitted detectors work too.
    """

    needs_fit = True

    def __init__(self, base: Detector | None = None) -> None:
        super().__init__()
        if base is not None and not isinstance(base, Detector):
            raise TypeError(f"{self.name}: base must be a Detector, got {type(base).__name__}")
        self.base = Energy() if base is None else base
        self.head_: LinearHead | None = None

    def _fit_shaping(self, train_features: torch.Tensor) -> None:
        """Learn what the shaping needs from ID training features [N, D]; default nothing."""

    @abstractmethod
    def shape(self, features: torch.Tensor) -> torch.Tensor:
        """[N, D] features → [N, D] shaped features."""

    def shaped_evidence(self, ev: Evidence) -> Evidence:
        """Evidence with shaped features and the head's logits on them."""
        assert self.head_ is not None
        shaped = self.shape(ev.features)
        return Evidence(features=shaped, logits=self.head_.logits(shaped))

    @torch.no_grad()
    def fit(
        self, train: Evidence, labels: torch.Tensor, head: LinearHead | None = None
    ) -> FeatureShapingDetector:
        train = self._check_evidence(train)
        check_labels(labels, len(train))
        if head is None:
            raise ValueError(
                f"{self.name} reshapes features and recomputes logits, so it needs the "
                "classifier head: call fit(train, labels, head=LinearHead(weight, bias))"
            )
        if not isinstance(head, LinearHead):
            raise TypeError(f"{self.name}: head must be a LinearHead, got {type(head).__name__}")
        if head.feature_dim != train.features.shape[1]:
            raise ValueError(
                f"{self.name}: head expects D={head.feature_dim}, "
                f"features have D={train.features.shape[1]}"
            )
        self.head_ = head
        self._fit_shaping(train.features)
        self.base.fit(self.shaped_evidence(train), labels, head)
        self._fitted = True
        return self

    @torch.no_grad()
    def score(self, ev: Evidence) -> torch.Tensor:
        ev = self._check_evidence(ev)
        self._require_fitted()
        return self.base.score(self.shaped_evidence(ev))
