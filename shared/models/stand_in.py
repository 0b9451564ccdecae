"""An untrained base-model bundle: for serving benchmarks and plumbing tests, never accuracy.

A randomly initialised :class:`~shared.models.two_stream.TwoStreamNet` with uniformly random
reference embeddings and every detector's threshold calibrated on random validation
embeddings. It has the shape and the cost of a real bundle (transport, registry, CLI, serving
all work on it) without training one first; its answers mean nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from shared.models.checkpoint import ModelBundle
from shared.models.two_stream import TwoStreamConfig, TwoStreamNet
from shared.ood.base import Evidence, LinearHead
from shared.ood.metrics import calibrate_threshold
from shared.ood.registry import DETECTORS, make_detector


def untrained_bundle(
    config: TwoStreamConfig,
    classes: Sequence[str],
    seed: int = 0,
    reference_rows: int = 600,
    validation_rows: int = 300,
    generator: torch.Generator | None = None,
    train_config: dict[str, Any] | None = None,
) -> ModelBundle:
    """A bundle of ``config`` with weights from ``torch.manual_seed(seed)``.

    Embeddings are drawn from ``generator`` when given, else from the global generator
    (right after the weights); thresholds keep 95 % of the validation rows in distribution.
    """
    if len(classes) != config.num_classes:
        raise ValueError(f"{len(classes)} class names for {config.num_classes} classes")
    torch.manual_seed(seed)
    model = TwoStreamNet(config).eval()
    head = LinearHead(model.fused_head.weight.detach(), model.fused_head.bias.detach())
    reference = torch.rand(reference_rows, config.embed_dim, generator=generator)
    logits = reference @ head.weight.T + head.bias
    labels = torch.arange(reference_rows) % config.num_classes
    validation = torch.rand(validation_rows, config.embed_dim, generator=generator)
    evidence = Evidence(validation, validation @ head.weight.T + head.bias)
    thresholds = {}
    for name in DETECTORS:
        detector = make_detector(name).fit(Evidence(reference, logits), labels, head)
        thresholds[name] = calibrate_threshold(detector.score(evidence).numpy(), 0.95)
    return ModelBundle(
        model=model,
        classes=list(classes),
        reference_features=reference,
        reference_logits=logits,
        reference_labels=labels,
        thresholds=thresholds,
        metrics={"val_accuracy": 0.0},
        train_config=dict(train_config or {}),
    )
