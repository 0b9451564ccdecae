"""Test support shared by every test folder (``pythonpath = ["tests"]`` in pyproject).

``make_tiny_bundle`` builds a randomly initialised, untrained base model with
reference features and calibrated thresholds — enough to test plumbing
(transport, registry, CLI), never accuracy.
"""

from __future__ import annotations

import torch

from shared.models.checkpoint import ModelBundle
from shared.models.two_stream import TwoStreamConfig, TwoStreamNet
from shared.ood.base import Evidence, LinearHead
from shared.ood.metrics import calibrate_threshold
from shared.ood.registry import DETECTORS, make_detector

TINY_CLASSES = ["a", "b", "c"]


def make_tiny_bundle(seed: int = 0) -> ModelBundle:
    torch.manual_seed(seed)
    config = TwoStreamConfig(num_classes=len(TINY_CLASSES), embed_dim=8, widths=(4, 4, 4))
    model = TwoStreamNet(config).eval()
    head = LinearHead(model.fused_head.weight.detach(), model.fused_head.bias.detach())
    ref_z = torch.rand(60, config.embed_dim)
    ref_logits = ref_z @ head.weight.T + head.bias
    ref_y = torch.arange(60) % len(TINY_CLASSES)
    val_z = torch.rand(30, config.embed_dim)
    val = Evidence(val_z, val_z @ head.weight.T + head.bias)
    thresholds = {}
    for name in DETECTORS:
        detector = make_detector(name).fit(Evidence(ref_z, ref_logits), ref_y, head)
        thresholds[name] = calibrate_threshold(detector.score(val).numpy(), 0.95)
    return ModelBundle(
        model=model,
        classes=list(TINY_CLASSES),
        reference_features=ref_z,
        reference_logits=ref_logits,
        reference_labels=ref_y,
        thresholds=thresholds,
        metrics={"val_accuracy": 0.0},
        train_config={"tiny": True},
    )


def make_tiny_denoiser(seed: int = 0, held_out: int = 7):
    """A small random (untrained) diffusion denoiser, width 8, with one class marked held out."""
    from shared.diffusion.denoiser import Denoiser, DenoiserConfig

    torch.manual_seed(seed)
    model = Denoiser(DenoiserConfig(width=8, token_dim=8, cond_dim=16, groups=4))
    with torch.no_grad():
        model.trained_classes[held_out] = 0.0
    return model.eval().requires_grad_(False)
