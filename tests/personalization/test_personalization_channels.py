"""Channel importance and selection against an independent numpy/scipy computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import entropy

from device_client.channel_selection import ChannelSelector, select_channels
from shared.channel_importance import (
    channel_count,
    channel_importance,
    check_alpha,
    check_indices,
    random_channels,
    top_alpha_channels,
)


def _reference_importance(window: np.ndarray) -> np.ndarray:
    """Written from the paper's description with np.histogram and scipy entropy."""
    entropies = np.array(
        [entropy(np.histogram(window[:, j], bins=256)[0]) for j in range(window.shape[1])]
    )
    variances = window.var(axis=0)

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    return 0.5 * softmax(entropies) + 0.5 * softmax(variances)


def test_importance_matches_reference():
    rng = np.random.default_rng(3)
    window = np.maximum(rng.normal(size=(200, 32)) * rng.uniform(0.1, 3, 32), 0)
    window[:, 5] = 0.0  # a dead channel: entropy 0, variance 0
    ours = channel_importance(window)
    assert np.allclose(ours, _reference_importance(window), atol=1e-12)
    assert ours.sum() == pytest.approx(1.0)
    assert ours[5] == ours.min()


def test_top_alpha_picks_the_highest_scores():
    rng = np.random.default_rng(0)
    window = rng.normal(size=(64, 128)) * np.linspace(0.1, 5, 128)
    importance = channel_importance(window)
    picked = top_alpha_channels(importance, 0.25)
    assert picked.size == 32 and np.all(np.diff(picked) > 0)
    assert importance[picked].min() >= np.delete(importance, picked).max()
    assert np.array_equal(select_channels(window, 0.25), picked)


@pytest.mark.parametrize(("alpha", "expected"), [(0.1, 13), (0.25, 32), (0.5, 64), (1.0, 128)])
def test_channel_count(alpha, expected):
    assert channel_count(alpha, 128) == expected


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.01, float("nan")])
def test_alpha_outside_unit_interval_is_refused(alpha):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        check_alpha(alpha)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ChannelSelector(8, alpha=alpha)


def test_random_selection_is_uniform_and_sized():
    rng = np.random.default_rng(1)
    counts = np.zeros(16)
    for _ in range(2000):
        chosen = random_channels(16, 0.25, rng)
        assert chosen.size == 4 and len(set(chosen)) == 4
        counts[chosen] += 1
    assert np.allclose(counts / 2000, 0.25, atol=0.04)


def test_check_indices_refuses_bad_lists():
    assert check_indices([0, 3, 7], 8).tolist() == [0, 3, 7]
    for bad, message in (
        ([0, 8], r"\[0, 8\)"),
        ([-1, 2], r"\[0, 8\)"),
        ([1, 1, 2], "strictly increasing"),
        ([3, 2], "strictly increasing"),
        ([], "non-empty"),
    ):
        with pytest.raises(ValueError, match=message):
            check_indices(bad, 8)
    with pytest.raises(TypeError, match="integers"):
        check_indices([0.5, 1.5], 8)


def test_selector_window_rolls_and_validates():
    selector = ChannelSelector(4, alpha=0.5, window=3)
    with pytest.raises(ValueError, match="at least 2"):
        selector.select()
    selector.observe(np.arange(20.0).reshape(5, 4))
    assert len(selector) == 3 and selector.window[0, 0] == 8.0
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        selector.observe(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="method"):
        select_channels(np.zeros((3, 4)), 0.5, "best")
