"""The base-model artifact: weights, config, reference features and thresholds in one file.

An artifact is a ``torch.save`` dict loaded with ``weights_only=True`` (no
pickled code runs on load, so a tampered file cannot execute anything). It
carries what the cloud and the device need to score clips without the training
data: the architecture config, the class names, a sample of ID training
features/logits/labels to fit detectors on (Mahalanobis, KNN, ViM, ...), and the
per-detector thresholds calibrated at 95 % ID acceptance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from shared.models.two_stream import TwoStreamConfig, TwoStreamNet
from shared.saved_files import load_saved, save_payload

ARTIFACT_FORMAT = "secdood-two-stream"
ARTIFACT_VERSION = 1


@dataclass
class ModelBundle:
    """A loaded base model plus what it needs for OOD scoring."""

    model: TwoStreamNet
    classes: list[str]
    reference_features: torch.Tensor  # [M, D] ID training embeddings
    reference_logits: torch.Tensor  # [M, C]
    reference_labels: torch.Tensor  # [M]
    thresholds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> TwoStreamConfig:
        return self.model.config


def bundle_to_bytes(bundle: ModelBundle) -> bytes:
    """Serialise a bundle into the artifact format."""
    payload = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "config": bundle.config.to_dict(),
        "state_dict": bundle.model.state_dict(),
        "classes": list(bundle.classes),
        "reference": {
            "features": bundle.reference_features.detach().float().contiguous(),
            "logits": bundle.reference_logits.detach().float().contiguous(),
            "labels": bundle.reference_labels.detach().long().contiguous(),
        },
        "thresholds": {k: float(v) for k, v in bundle.thresholds.items()},
        "metrics": bundle.metrics,
        "train_config": bundle.train_config,
    }
    return save_payload(payload)


def bundle_from_bytes(data: bytes) -> ModelBundle:
    """Load an artifact; raises ValueError on anything that is not a valid one."""
    payload = load_saved(data, ARTIFACT_FORMAT, (ARTIFACT_VERSION,), "SecDOOD model artifact")
    model = TwoStreamNet(TwoStreamConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    ref = payload["reference"]
    return ModelBundle(
        model=model,
        classes=list(payload["classes"]),
        reference_features=ref["features"],
        reference_logits=ref["logits"],
        reference_labels=ref["labels"],
        thresholds=dict(payload.get("thresholds", {})),
        metrics=dict(payload.get("metrics", {})),
        train_config=dict(payload.get("train_config", {})),
    )


def save_bundle(bundle: ModelBundle, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(bundle_to_bytes(bundle))
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def load_bundle(path: str | Path) -> ModelBundle:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model artifact not found: {path}")
    return bundle_from_bytes(path.read_bytes())
