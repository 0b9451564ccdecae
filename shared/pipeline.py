"""Clip → flow → embedding → logits → detector → verdict, in one readable place.

Both the cloud (REST scoring, evaluation) and the device run this. Detectors are
fitted once on the reference ID features stored in the model artifact, and each
detector's threshold comes from the artifact (calibrated at 95 % ID
acceptance), so scoring needs no training data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shared.data.flow import compute_flow_batch
from shared.data.tensors import flow_to_tensor, frames_to_tensor
from shared.models.checkpoint import ModelBundle
from shared.ood.base import Detector, Evidence, LinearHead
from shared.ood.registry import DETECTORS, make_detector

DEFAULT_DETECTOR = "energy"


@dataclass
class Verdicts:
    """Per-clip results; ``ood_score``: higher = more OOD; ``is_ood``: score > threshold."""

    logits: torch.Tensor  # [N, C]
    features: torch.Tensor  # [N, D]
    labels: list[str]
    ood_score: torch.Tensor  # [N]
    is_ood: torch.Tensor  # [N] bool
    threshold: float
    detector: str
    scores: dict[str, torch.Tensor]  # every requested detector's score [N]


class OODPipeline:
    """Scores clips or embeddings with the base model and a set of fitted detectors."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.model = bundle.model.eval()
        head = self.model.fused_head
        self.head = LinearHead(weight=head.weight.detach(), bias=head.bias.detach())
        self._detectors: dict[str, Detector] = {}

    @property
    def embed_dim(self) -> int:
        return self.bundle.config.embed_dim

    def detector(self, name: str) -> Detector:
        """The fitted detector ``name`` (fitted on first use, then cached)."""
        if name not in DETECTORS:
            raise ValueError(f"unknown detector {name!r}; choose one of {sorted(DETECTORS)}")
        if name not in self._detectors:
            reference = Evidence(self.bundle.reference_features, self.bundle.reference_logits)
            self._detectors[name] = make_detector(name).fit(
                reference, self.bundle.reference_labels, self.head
            )
        return self._detectors[name]

    def threshold(self, name: str) -> float:
        if name not in self.bundle.thresholds:
            raise ValueError(f"the model has no calibrated threshold for detector {name!r}")
        return float(self.bundle.thresholds[name])

    @torch.inference_mode()
    def embed_clips(self, frames: np.ndarray, batch_size: int = 128) -> torch.Tensor:
        """uint8 clips [N, T, H, W, 3] → fused embeddings z [N, D] (flow computed here)."""
        flow = compute_flow_batch(frames)
        out = []
        for start in range(0, len(frames), batch_size):
            rgb = frames_to_tensor(frames[start : start + batch_size])
            fl = flow_to_tensor(flow[start : start + batch_size])
            out.append(self.model.embed(rgb, fl))
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def check_features(self, features: torch.Tensor) -> torch.Tensor:
        features = torch.as_tensor(features, dtype=torch.float32)
        if features.ndim != 2 or features.shape[1] != self.embed_dim:
            raise ValueError(f"features must be [N, {self.embed_dim}], got {list(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN or infinite values")
        return features

    @torch.inference_mode()
    def score_features(
        self,
        features: torch.Tensor,
        detector: str = DEFAULT_DETECTOR,
        extra_detectors: tuple[str, ...] = (),
        logits: torch.Tensor | None = None,
        threshold: float | None = None,
    ) -> Verdicts:
        """Score embeddings with the given (e.g. personalised) logits, else the global head.

        ``threshold`` overrides the model's calibrated threshold for ``detector`` (a
        personalised head scores on its own scale); None keeps the calibrated one.
        """
        features = self.check_features(features)
        if logits is None:
            logits = features @ self.head.weight.T + self.head.bias
        evidence = Evidence(features, logits)
        names = [detector, *[d for d in extra_detectors if d != detector]]
        scores = {name: self.detector(name).score(evidence) for name in names}
        if threshold is None:
            threshold = self.threshold(detector)
        elif not np.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold}")
        main = scores[detector]
        return Verdicts(
            logits=logits,
            features=features,
            labels=[self.bundle.classes[i] for i in logits.argmax(1).tolist()],
            ood_score=main,
            is_ood=main > threshold,
            threshold=float(threshold),
            detector=detector,
            scores=scores,
        )

    def score_clips(
        self, frames: np.ndarray, detector: str = DEFAULT_DETECTOR, extra_detectors=()
    ) -> Verdicts:
        return self.score_features(self.embed_clips(frames), detector, tuple(extra_detectors))
