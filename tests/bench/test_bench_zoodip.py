"""bench/zoodip.py on a tiny random denoiser: the result's shape and the fresh-process jobs."""

from __future__ import annotations

import pytest
from support import make_tiny_denoiser

from bench.zoodip import (
    METHODS,
    digit_classifier,
    memory_and_speed,
    passes_to,
    run_seed,
)
from shared.diffusion.artifact import int8_denoiser_bytes, int8_denoiser_from_bytes
from shared.diffusion.data import concept_images


def _method_artifact(model) -> bytes:
    import io

    import torch

    from shared.diffusion.artifact import denoiser_state

    buffer = io.BytesIO()
    torch.save(
        {"format": "secdood-method", "format_version": 1, "method": "diffusion",
         "state": denoiser_state(model, 7), "config": {}, "metrics": {}},
        buffer,
    )  # fmt: skip
    return buffer.getvalue()


def test_passes_to_target_is_the_first_pass_count_at_or_below_it():
    history = [(0, 1.0), (50, 0.8), (100, 0.6), (150, 0.7)]
    assert passes_to(history, 0.8) == 50 and passes_to(history, 0.6) == 100
    assert passes_to(history, 0.5) is None


@pytest.fixture(scope="module")
def tiny():
    model = make_tiny_denoiser()
    return model, int8_denoiser_from_bytes(int8_denoiser_bytes(model, 7))[0]


def test_one_seed_reports_every_method(tiny):
    classifier, accuracy = digit_classifier(7, concept_images(5))
    assert accuracy > 0.9  # the judge itself must be good at real digits
    out = run_seed(*tiny, 7, 0, steps=2, samples=3, sample_steps=2, classifier=classifier)
    for name in (*METHODS, "backprop_ti"):
        assert 0.0 <= out[name]["recognised_fraction"] <= 1.0
        assert out[name]["forward_passes"] == (2 if name == "backprop_ti" else 4)
    assert set(out["tokens"]) == {*METHODS, "backprop_ti"}


@pytest.mark.slow  # three fresh interpreters
def test_memory_jobs_run_in_fresh_processes(tiny):
    memory = memory_and_speed(_method_artifact(tiny[0]), int8_denoiser_bytes(tiny[0], 7), 7, 2, 1)
    assert memory["zo_int8_mib"] > 50 and memory["backprop_ti_mib"] > 50
    assert memory["iterations_per_second"]["zo_int8"] > 0
