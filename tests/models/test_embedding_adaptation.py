"""shared.embedding_adaptation: the kinds of embeddings H reads, their wire form and models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import make_hypernet, make_tiny_bundle

from shared.data.tensors import flow_to_tensor, frames_to_tensor
from shared.embedding_adaptation import (
    DEFAULT,
    MAX_LAYERS,
    PLAIN,
    EmbeddingAdaptation,
    adapted_model,
    adapted_names,
)
from shared.hypernet import hypernet_from_state, hypernet_state
from shared.models.int8 import N_BLOCKS
from shared.models.leantta import LeanTTANorm


def test_wire_form_round_trips_and_refuses_junk():
    assert MAX_LAYERS == N_BLOCKS
    assert EmbeddingAdaptation.from_key(DEFAULT.key) == DEFAULT
    assert EmbeddingAdaptation.from_key("") == PLAIN == EmbeddingAdaptation.from_key("none")
    other = EmbeddingAdaptation(mode="leantta", layers=1, tau=0.25, lam=0.9)
    assert EmbeddingAdaptation.from_key(other.key) == other != DEFAULT
    for junk in ("leantta", "leantta:3:0.5", "bn:3:0.5:0", "leantta:9:0.5:0", "leantta:3:2:0"):
        with pytest.raises(ValueError, match="embedding kind"):
            EmbeddingAdaptation.from_key(junk)
    assert "LeanTTA" in DEFAULT.describe() and "plain" in PLAIN.describe()


def test_leantta_embeddings_differ_from_plain_ones_and_leave_the_model_alone():
    bundle = make_tiny_bundle()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 8, 32, 32, 3), dtype=np.uint8)
    flow = rng.normal(size=(3, 7, 2, 32, 32)).astype(np.float32)
    rgb, motion = frames_to_tensor(frames), flow_to_tensor(flow)
    assert adapted_model(bundle.model, PLAIN) is bundle.model
    adapted = adapted_model(bundle.model, DEFAULT)
    swapped = [m for m in adapted.modules() if isinstance(m, LeanTTANorm)]
    assert len(swapped) == len(adapted_names(DEFAULT.layers)) == 2 * DEFAULT.layers
    assert not any(isinstance(m, LeanTTANorm) for m in bundle.model.modules())
    with torch.no_grad():
        plain, lean = bundle.model.embed(rgb, motion), adapted.embed(rgb, motion)
        # per clip: one clip's embedding does not depend on the others in its batch
        alone = adapted.embed(rgb[:1], motion[:1])
    assert not torch.allclose(plain, lean)
    torch.testing.assert_close(alone, lean[:1])


def test_h_state_records_the_kind_and_older_states_read_plain():
    hypernet = make_hypernet(8, 3, seed=1)
    assert hypernet.embedding == PLAIN
    state = hypernet_state(hypernet)
    assert "embedding" not in state  # plain H states look as they did before
    assert hypernet_from_state(state).embedding == PLAIN
    hypernet.embedding = DEFAULT
    assert hypernet_from_state(hypernet_state(hypernet)).embedding == DEFAULT
