"""Fixtures shared across the test suite (helpers live in tests/support.py)."""

from __future__ import annotations

import pytest
from support import make_tiny_bundle

from shared.model_names import BASE_MODEL
from shared.models.checkpoint import ModelBundle


@pytest.fixture
def tiny_bundle() -> ModelBundle:
    return make_tiny_bundle()


@pytest.fixture
def registry(tmp_path, tiny_bundle):
    """A registry in tmp_path with the tiny bundle registered as ``secdood_base``."""
    from server.registry import open_registry
    from shared.models.checkpoint import bundle_to_bytes

    reg = open_registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}", tmp_path)
    reg.register_model(BASE_MODEL, BASE_MODEL, {"tiny": True}, {}, bundle_to_bytes(tiny_bundle))
    yield reg
    close = getattr(reg, "close", None)
    if close is not None:
        close()
