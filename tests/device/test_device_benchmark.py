"""device_client.benchmark helpers: memory-job names, pass counting, paired counts (no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_client.benchmark import (
    ZO_MEMORY_SWEEP,
    _paired,
    _parse_zo_job,
    _passes_to_reach,
    _thin,
    memory_job,
    zo_job_name,
)
from device_client.runtime import ZOStreamConfig


def test_zo_job_names_round_trip_to_their_config():
    for window, eval_batch in ZO_MEMORY_SWEEP:
        config = _parse_zo_job(zo_job_name(window, eval_batch))
        assert config == ZOStreamConfig(window=window, eval_batch=eval_batch)
    for other in ("zo", "inference", "zo_w16", "zo_wx_b4", "zo_w16_c4", "tent_w1_b1"):
        assert _parse_zo_job(other) is None


def test_unknown_memory_job_is_rejected_before_any_work(tmp_path):
    missing = Path(tmp_path) / "missing.pt"
    with pytest.raises(ValueError, match="unknown memory job 'train'"):
        memory_job("train", missing, missing, missing)


def test_passes_to_reach_and_thinning():
    history = [(0, 5.0), (2, 3.0), (4, 1.0), (6, 1.5), (8, 0.5)]
    assert _passes_to_reach(history, 1.0) == 4
    assert _passes_to_reach(history, 0.5) == 8
    assert _passes_to_reach(history, 0.1) is None
    long = [(i, float(-i)) for i in range(1001)]
    thinned = _thin(long)
    assert thinned[0] == long[0] and thinned[-1] == long[-1]
    assert len(thinned) <= 301
    assert all(a[0] < b[0] for a, b in zip(thinned, thinned[1:], strict=False))


def test_paired_counts_discordant_clips():
    rng = np.random.default_rng(0)
    none, adapted = rng.random(200) < 0.6, rng.random(200) < 0.7
    result = _paired(none, adapted)
    assert result["fixed"] == sum(1 for a, b in zip(none, adapted, strict=True) if b and not a)
    assert result["broken"] == sum(1 for a, b in zip(none, adapted, strict=True) if a and not b)
    assert 0.0 < result["mcnemar_p"] <= 1.0
    assert _paired(none, none) == {"fixed": 0, "broken": 0, "mcnemar_p": 1.0}
