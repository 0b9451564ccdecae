"""Test support shared by every test folder (``pythonpath = ["tests"]`` in pyproject).

``make_tiny_bundle`` builds a randomly initialised, untrained base model with
reference features and calibrated thresholds — enough to test plumbing
(transport, registry, CLI), never accuracy.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from shared.models.checkpoint import ModelBundle
from shared.models.two_stream import TwoStreamConfig, TwoStreamNet
from shared.ood.base import Evidence, LinearHead
from shared.ood.metrics import calibrate_threshold
from shared.ood.registry import DETECTORS, make_detector

TINY_CLASSES = ["a", "b", "c"]
T = TypeVar("T")


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


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(
    check: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 1.0
) -> T:
    """Poll ``check`` until it returns something other than None/False; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)
