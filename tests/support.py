"""Test support shared by every test folder (``pythonpath = ["tests"]`` in pyproject).

``wait_until`` is the one polling helper of the suite. ``make_tiny_bundle``
builds a randomly initialised, untrained base model with reference features and
calibrated thresholds — enough to test plumbing (transport, registry, CLI),
never accuracy. ``make_hypernet`` and ``SMALL_PARAMS`` (a small CKKS ring) do
the same for personalisation.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from shared.he import CKKSParams
from shared.hypernet import HyperNetwork, HyperNetworkConfig
from shared.models.checkpoint import ModelBundle
from shared.models.stand_in import untrained_bundle
from shared.models.two_stream import TwoStreamConfig

TINY_CLASSES = ["a", "b", "c"]
T = TypeVar("T")


def make_tiny_bundle(seed: int = 0) -> ModelBundle:
    config = TwoStreamConfig(num_classes=len(TINY_CLASSES), embed_dim=8, widths=(4, 4, 4))
    return untrained_bundle(config, TINY_CLASSES, seed, 60, 30, train_config={"tiny": True})


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(
    condition: Callable[[], T | None],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``condition`` until it returns a truthy value (returned); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {value!r})")
        time.sleep(interval)


#: small ring for plumbing tests (keys in well under a second); precision ~1e-3
SMALL_PARAMS = CKKSParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(40, 29, 40), scale_bits=29)


def make_hypernet(embed_dim: int, num_classes: int, variant: str = "one_m", seed: int = 0):
    """An eval-mode H whose BatchNorms have non-trivial running statistics and affine weights."""
    torch.manual_seed(seed)
    model = HyperNetwork(HyperNetworkConfig(embed_dim, num_classes, variant, hidden_dim=16))
    with torch.no_grad():
        for norm in (model.kernel_norm, model.bias_norm):
            norm.weight.uniform_(0.05, 0.3)
            norm.bias.normal_(0.0, 0.5)
        model.train()
        for _ in range(5):  # move the running statistics away from (0, 1)
            model(torch.rand(64, embed_dim) * 2.0)
    return model.eval()


def make_tiny_denoiser(seed: int = 0, held_out: int = 7):
    """A small random (untrained) diffusion denoiser, width 8, with one class marked held out."""
    from shared.diffusion.denoiser import Denoiser, DenoiserConfig

    torch.manual_seed(seed)
    model = Denoiser(DenoiserConfig(width=8, token_dim=8, cond_dim=16, groups=4))
    with torch.no_grad():
        model.trained_classes[held_out] = 0.0
    return model.eval().requires_grad_(False)
