"""Fixtures for personalisation tests: CKKS contexts (HyperNetworks: ``support.make_hypernet``)."""

from __future__ import annotations

import pytest
import tenseal
from support import SMALL_PARAMS

from shared.he import CKKSParams, create_context, public_context_bytes


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
