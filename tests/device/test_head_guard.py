"""device_client.head_guard: fallback / blend decisions from label-free checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from device_client.head_guard import HeadGuard, disagreement, information, mean_msp

D, C = 6, 3


def _head():
    weight = torch.eye(C, D) * 4.0
    return weight, torch.zeros(C)


def _theta(weight: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
    return torch.cat([weight.T.reshape(-1), bias]).double().numpy()


def _clips(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 0.1, (n, D))
    z[np.arange(n), np.arange(n) % C] += 1.0  # class k lights up channel k
    return z


def test_a_sharper_equivalent_head_is_trusted_and_served():
    weight, bias = _head()
    guard = HeadGuard(weight, bias)
    theta = _theta(weight * 2.0, bias)  # same decisions, more confident
    state = guard.refresh(_clips(60), theta)
    assert state.trusted and state.reference_disagreement == 0.0
    z = _clips(10, seed=1)
    expected = torch.from_numpy(z) @ (weight * 2.0).double().T
    assert torch.allclose(guard.logits(z), expected)


def test_a_head_less_confident_than_global_falls_back_at_refresh():
    weight, bias = _head()
    guard = HeadGuard(weight, bias)
    state = guard.refresh(_clips(60), _theta(weight.roll(1, 0) * 0.2, bias))  # wrong and unsure
    assert not state.trusted and state.msp_personalised < state.msp_global
    z = _clips(10, seed=1)
    assert torch.allclose(guard.logits(z), torch.from_numpy(z) @ weight.double().T)


def test_disagreement_beyond_the_reference_falls_back_or_blends():
    weight, bias = _head()
    swapped = weight.clone()
    swapped[[0, 1]] = weight[[1, 0]] * 1.5  # classes 0 and 1 swapped, confident
    theta = _theta(swapped, bias)
    window = _clips(60) * np.array([0, 0, 1, 1, 1, 1.0])  # at refresh: only class-2 clips count
    window[:, 2] += 1.0
    for mode, expected_weight in (("fallback", 1.0), ("blend", 1.0)):
        guard = HeadGuard(weight, bias, mode=mode, disagreement_margin=0.2)
        state = guard.refresh(window, theta)
        assert state.trusted and state.reference_disagreement == 0.0
        later = _clips(60, seed=2)  # now two thirds of the clips are classes 0/1: disagreement
        assert guard.global_weight(later) == pytest.approx(expected_weight)
        assert guard.state is not None and guard.state.disagreement > 0.6
    blend = HeadGuard(weight, bias, mode="blend", disagreement_margin=0.5)
    blend.refresh(window, theta)
    assert 0.0 < blend.global_weight(later) < 1.0


def test_bad_use_is_refused():
    weight, bias = _head()
    guard = HeadGuard(weight, bias)
    with pytest.raises(RuntimeError, match="refresh"):
        guard.logits(_clips(4))
    with pytest.raises(ValueError, match="mode"):
        HeadGuard(weight, bias, mode="mean")
    guard.refresh(_clips(8), _theta(weight, bias))
    with pytest.raises(ValueError, match=r"\[N, 6\]"):
        guard.logits(np.zeros((2, 5)))
    assert disagreement(torch.eye(3), torch.eye(3)) == 0.0


def test_information_rejects_a_confident_head_that_piles_clips_onto_one_class():
    weight, bias = _head()
    collapsed = torch.zeros(C, D)
    collapsed[0] = 1.0  # every clip → class 0, with high confidence
    theta = _theta(collapsed * 8.0, torch.tensor([6.0, 0.0, 0.0]))
    window = _clips(60)
    by_msp = HeadGuard(weight, bias, signal="msp").refresh(window, theta)
    by_information = HeadGuard(weight, bias, signal="information").refresh(window, theta)
    assert by_msp.trusted and by_msp.msp_personalised > by_msp.msp_global
    assert not by_information.trusted
    assert by_information.score_personalised < 0.2 < by_information.score_global


def test_information_keeps_an_unsure_head_that_reads_a_shifted_camera_right():
    weight, bias = _head()
    window = _clips(60)
    window[:, C : 2 * C] += window[:, :C]  # the camera moves the class channels elsewhere ...
    window[:, :C] *= 0.1
    window[:, 0] += 2.0  # ... and adds a cast the global head reads as class 0, confidently
    right = torch.zeros(C, D)
    right[:, C : 2 * C] = torch.eye(C) * 1.5  # unsure but right on the moved channels
    state = HeadGuard(weight, bias, signal="information").refresh(window, _theta(right, bias))
    by_msp = HeadGuard(weight, bias, signal="msp").refresh(window, _theta(right, bias))
    assert state.trusted and state.score_personalised > state.score_global
    assert not by_msp.trusted and by_msp.msp_global > by_msp.msp_personalised + 0.1


def test_a_window_smaller_than_the_classes_is_judged_and_reported_by_msp():
    weight, bias = _head()
    theta = _theta(weight * 2.0, bias)
    window = _clips(C - 1)
    state = HeadGuard(weight, bias, signal="information").refresh(window, theta)
    personal = torch.from_numpy(window) @ (weight * 2.0).double().T
    global_ = torch.from_numpy(window) @ weight.double().T
    assert state.signal == "msp"
    assert state.score_personalised == pytest.approx(mean_msp(personal), abs=1e-12)
    assert state.score_global == pytest.approx(mean_msp(global_), abs=1e-12)


def test_information_is_one_for_certain_even_decisions_and_zero_for_one_class():
    certain = torch.eye(C) * 50.0
    assert information(certain) == pytest.approx(1.0, abs=1e-6)
    assert information(torch.tensor([[50.0, 0.0, 0.0]] * 4)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="signal"):
        HeadGuard(*_head(), signal="energy")  # type: ignore[arg-type]


def test_the_msp_allowance_grows_with_the_standard_error_of_the_window():
    weight, bias = _head()
    theta = _theta(weight * 0.8, bias)  # same decisions, a little less sure on every clip
    window = _clips(12, seed=3)
    z = torch.from_numpy(window)
    diff = (
        torch.softmax(z @ (weight * 0.8).double().T, 1).max(1).values
        - torch.softmax(z @ weight.double().T, 1).max(1).values
    ).numpy()
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert diff.mean() < 0 and se > 0
    slack = float(-diff.mean() - se)  # one standard error short of trusting it on the slack alone
    for k, trusted in ((0.0, False), (0.5, False), (2.0, True)):
        guard = HeadGuard(
            weight, bias, confidence_slack=slack, confidence_standard_errors=k, signal="msp"
        )
        assert guard.refresh(window, theta).trusted is trusted, k
    # one clip has no spread: the allowance is the slack alone, whatever k
    one = HeadGuard(
        weight, bias, confidence_slack=0.0, confidence_standard_errors=100.0, signal="msp"
    )
    assert one.refresh(window[:1], theta).trusted is False
    with pytest.raises(ValueError, match="confidence_standard_errors"):
        HeadGuard(weight, bias, confidence_standard_errors=-1.0)
    # the information signal is a whole-window statistic: no per-clip allowance applies
    info = HeadGuard(weight, bias, confidence_standard_errors=100.0, signal="information")
    plain = HeadGuard(weight, bias, signal="information")
    assert info.refresh(window, theta) == plain.refresh(window, theta)
