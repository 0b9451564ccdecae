"""bench/device helpers: memory-job names, pass counting, paired counts, task split (no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.device_memory import ZO_MEMORY_SWEEP, memory_job, parse_zo_job, zo_job_name
from bench.device_shift import LEANTTA_GRID, mcnemar
from bench.device_zo import ZO_TASKS, passes_to_reach, thin_history
from device_client.runtime import DEFAULT_ADAPT_LAYERS, ZOStreamConfig
from shared.data.adaptation_shifts import (
    ADAPTATION_TEST_CORRUPTIONS,
    ADAPTATION_VALIDATION_CORRUPTIONS,
)


def test_zo_job_names_round_trip_to_their_config():
    for window, eval_batch in ZO_MEMORY_SWEEP:
        config = parse_zo_job(zo_job_name(window, eval_batch))
        assert config == ZOStreamConfig(window=window, eval_batch=eval_batch)
    for other in ("zo", "inference", "zo_w16", "zo_wx_b4", "zo_w16_c4", "tent_w1_b1"):
        assert parse_zo_job(other) is None


def test_unknown_memory_job_is_rejected_before_any_work(tmp_path):
    missing = Path(tmp_path) / "missing.pt"
    with pytest.raises(ValueError, match="unknown memory job 'train'"):
        memory_job("train", missing, missing, missing)


def test_passes_to_reach_and_thinning():
    history = [(0, 5.0), (2, 3.0), (4, 1.0), (6, 1.5), (8, 0.5)]
    assert passes_to_reach(history, 1.0) == 4
    assert passes_to_reach(history, 0.5) == 8
    assert passes_to_reach(history, 0.1) is None
    long = [(i, float(-i)) for i in range(1001)]
    thinned = thin_history(long)
    assert thinned[0] == long[0] and thinned[-1] == long[-1]
    assert len(thinned) <= 301
    assert all(a[0] < b[0] for a, b in zip(thinned, thinned[1:], strict=False))


def test_mcnemar_counts_discordant_clips():
    rng = np.random.default_rng(0)
    none, adapted = rng.random(200) < 0.6, rng.random(200) < 0.7
    result = mcnemar(none, adapted)
    assert result["fixed"] == sum(1 for a, b in zip(none, adapted, strict=True) if b and not a)
    assert result["broken"] == sum(1 for a, b in zip(none, adapted, strict=True) if a and not b)
    assert 0.0 < result["mcnemar_p"] <= 1.0
    assert mcnemar(none, none) == {"fixed": 0, "broken": 0, "mcnemar_p": 1.0}
    lopsided = mcnemar(np.zeros(40, bool), np.ones(40, bool))  # 40 fixed, 0 broken
    assert lopsided["fixed"] == 40 and lopsided["mcnemar_p"] < 1e-9


def test_settings_are_swept_on_validation_shifts_and_tested_on_held_out_ones():
    assert LEANTTA_GRID[0][0] == DEFAULT_ADAPT_LAYERS  # the runtime default is a candidate
    assert len(set(LEANTTA_GRID)) == len(LEANTTA_GRID)
    assert set(ZO_TASKS["validation"]) <= set(ADAPTATION_VALIDATION_CORRUPTIONS)
    assert set(ZO_TASKS["test"]) <= set(ADAPTATION_TEST_CORRUPTIONS)
