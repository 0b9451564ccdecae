"""Fixtures for personalisation tests: trained-looking HyperNetworks and CKKS contexts."""

from __future__ import annotations

import pytest
import tenseal
import torch

from shared.he import CKKSParams, create_context, public_context_bytes
from shared.hypernet import HyperNetwork, HyperNetworkConfig

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


@pytest.fixture(scope="session")
def small_context() -> tenseal.Context:
    return create_context(SMALL_PARAMS)


@pytest.fixture(scope="session")
def default_context() -> tenseal.Context:
    """The product's default parameters (N = 8192); a few seconds, built once."""
    return create_context(CKKSParams())


@pytest.fixture(scope="session")
def default_public_bytes(default_context) -> bytes:
    return public_context_bytes(default_context)
