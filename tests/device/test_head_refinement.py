"""The device's closed-form refinement of the cloud's Θ (device_client.head_refinement)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from device_client.gateway_client import PersonalizeReply, ServerUnreachableError
from device_client.head_guard import HeadGuard
from device_client.head_refinement import (
    OFFSET_QUANTILE,
    GaussianHead,
    RefinementSettings,
    cross_fitted_energy,
    refine_head,
)
from device_client.keyring import (
    FAMILIARITY_FILE,
    REFINED_FILE,
    DeviceKeyring,
    PersonalizationSettings,
)
from device_client.personalization import (
    THRESHOLD_QUANTILE,
    Personalizer,
    energy_offset,
)
from device_client.state import DeviceState
from device_client.theta_snapshot import refined_from_bytes, refined_to_bytes
from shared.familiarity import FAMILIAR_RATIO, FamiliarityReference, familiarity_reference
from shared.hypernet import personalised_logits
from shared.ood.energy import energy

D, C = 8, 3
CLEAN_MEANS = 4.0 * np.eye(C, D)  # class k sits at 4·e_k
#: the camera moves every class: a common translation and a per-class drift
SHIFT = np.array([1.75, -1.4, 1.05, 0.0, 2.1, 0.0, 0.0, 0.0])
DRIFT = 1.2 * np.roll(np.eye(C, D), 1, axis=1)  # class k also drifts along e_(k+1)


def global_theta() -> np.ndarray:
    """The LDA head of the clean classes (identity covariance) in Θ layout."""
    kernel = CLEAN_MEANS.T  # [D, C]
    bias = -0.5 * (CLEAN_MEANS**2).sum(1)
    return np.concatenate([kernel.reshape(-1), bias])


def shifted_clips(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    z = CLEAN_MEANS[y] + SHIFT + DRIFT[y] + rng.normal(0, 0.7, (n, D))
    return z, y


def accuracy(logits: torch.Tensor, y: np.ndarray) -> float:
    return float((logits.argmax(1).numpy() == y).mean())


#: the window's statistics alone (β = 0): what EM recovers without the cloud's vote
WINDOW_ONLY = RefinementSettings(cloud_weight=0.0)


def test_refinement_recovers_the_shifted_classes_without_labels():
    window, _ = shifted_clips(64, seed=0)
    z, y = shifted_clips(2000, seed=1)
    theta = torch.from_numpy(global_theta())
    before = accuracy(personalised_logits(torch.from_numpy(z), theta, C), y)
    head = refine_head(window, global_theta(), C, WINDOW_ONLY)
    after = accuracy(head.logits(z), y)
    # the oracle: the same LDA with the true shifted means
    means = CLEAN_MEANS + SHIFT + DRIFT
    oracle = accuracy(torch.from_numpy(z @ means.T - 0.5 * (means**2).sum(1)), y)
    assert before < 0.9  # the shift hurts the cloud's head ...
    assert after > before + 0.1  # ... the window's statistics repair it
    assert after >= oracle - 0.03


def test_the_quadratic_terms_are_common_to_all_classes():
    window, _ = shifted_clips(64, seed=2)
    head = refine_head(window, global_theta(), C)
    z, _ = shifted_clips(50, seed=3)
    beta = head.cloud_weight
    kernel, bias = head.kernel + beta * head.cloud_kernel, head.bias + beta * head.cloud_bias
    linear = torch.from_numpy(z @ kernel + bias)
    common = head.logits(z) - linear
    # the same number added to every class: argmax and softmax are the LDA's
    assert torch.allclose(common, common[:, :1].expand_as(common), atol=1e-9)
    assert torch.equal(head.logits(z).argmax(1), linear.argmax(1))
    assert not torch.allclose(common, torch.zeros_like(common))


def test_the_cloud_head_votes_with_weight_beta():
    window, _ = shifted_clips(64, seed=20)
    z, _ = shifted_clips(30, seed=21)
    alone = refine_head(window, global_theta(), C, WINDOW_ONLY)
    voting = refine_head(window, global_theta(), C, RefinementSettings(cloud_weight=2.0))
    cloud = personalised_logits(torch.from_numpy(z), torch.from_numpy(global_theta()), C)
    assert torch.allclose(voting.logits(z), alone.logits(z) + 2.0 * cloud, atol=1e-9)


def test_anchored_e_steps_use_the_refined_heads_own_posterior():
    window, _ = shifted_clips(64, seed=22)
    beta = 2.0
    settings = RefinementSettings(iterations=1, cloud_weight=beta, anchored=True)
    first = refine_head(window, global_theta(), C, settings)
    # the first E-step is the cloud's alone, so one anchored iteration is plain EM
    plain = refine_head(window, global_theta(), C, RefinementSettings(iterations=1))
    assert np.allclose(first.kernel, plain.kernel) and np.allclose(first.bias, plain.bias)
    # the second E-step: softmax(LDA of the first M-step + β·Θ), by hand
    cloud = window @ first.cloud_kernel + first.cloud_bias
    membership = torch.softmax(
        torch.from_numpy(window @ first.kernel + first.bias + beta * cloud), 1
    )
    means = (membership.T.numpy() @ window) / membership.sum(0).numpy()[:, None]
    second = refine_head(
        window,
        global_theta(),
        C,
        RefinementSettings(iterations=2, cloud_weight=beta, anchored=True),
    )
    assert np.allclose(second.kernel, second.precision @ means.T, atol=1e-8)
    unanchored = refine_head(
        window, global_theta(), C, RefinementSettings(iterations=2, cloud_weight=beta)
    )
    assert not np.allclose(second.kernel, unanchored.kernel)


def test_energy_of_the_refined_head_flags_clips_off_the_cameras_classes():
    window, _ = shifted_clips(64, seed=4)
    head = refine_head(window, global_theta(), C)
    z_id, _ = shifted_clips(200, seed=5)
    rng = np.random.default_rng(6)
    # off-manifold clips: as far from the window's mean as ID clips, in other directions
    z_ood = SHIFT + np.concatenate([np.zeros((200, C)), rng.normal(0, 3.0, (200, D - C))], 1)
    energy_id = torch.logsumexp(head.logits(z_id), 1)
    energy_ood = torch.logsumexp(head.logits(z_ood), 1)
    assert float((energy_ood < energy_id.median()).float().mean()) > 0.95


@pytest.mark.parametrize(
    "window, theta, message",
    [
        (np.zeros((8, D)), global_theta(), "at least 32"),
        (np.full((64, D), np.nan), global_theta(), "finite"),
        (np.zeros(D), global_theta(), r"\[W, D\]"),
        (np.zeros((64, D)), np.zeros(5), "D·C \\+ C"),
    ],
)
def test_bad_input_gets_a_clear_error(window, theta, message):
    with pytest.raises(ValueError, match=message):
        refine_head(window, theta, C)


BAD_SETTINGS = [
    {"iterations": 0},
    {"shrinkage": 0.0},
    {"shrinkage": float("nan")},
    {"min_window": 1},
    {"offset_quantile": 0.0},
    {"offset_quantile": 1.0},
]


@pytest.mark.parametrize("kwargs", BAD_SETTINGS)
def test_settings_are_validated(kwargs):
    with pytest.raises(ValueError):
        RefinementSettings(**kwargs)


class FixedTheta:
    """A cloud that always answers with the same Θ (plaintext), or is unreachable."""

    def __init__(self, theta: np.ndarray, reachable: bool = True) -> None:
        self.theta, self.reachable, self.calls = theta, reachable, 0

    def personalize(
        self,
        alpha,
        indices,
        encrypted=None,
        plain=None,
        familiarity_sha256="",
        embedding_kind="none",
    ) -> PersonalizeReply:
        self.calls += 1
        if not self.reachable:
            raise ServerUnreachableError("cloud down")
        theta = self.theta.tolist()
        return PersonalizeReply([], theta, "hypernetwork", 1, "ab" * 32, D, C, 0, 1, 1)


def test_the_personalizer_refines_theta_once_the_window_is_large_enough():
    cloud = FixedTheta(global_theta())
    device = Personalizer(
        cloud, D, C, None, alpha=1.0, window=64, min_window=16, refinement=WINDOW_ONLY
    )
    first, _ = shifted_clips(16, seed=7)
    logits = device.logits(first)  # refreshed on 16 clips: too few to refine
    assert not device.refined
    expected = personalised_logits(torch.from_numpy(first), torch.from_numpy(global_theta()), C)
    assert torch.allclose(logits, expected)
    more, _ = shifted_clips(40, seed=8)
    device.logits(more)  # 56 clips now: refined on the device, no new request
    assert device.refined and cloud.calls == 1
    assert isinstance(device.head, GaussianHead)
    z, y = shifted_clips(500, seed=9)
    refined_logits = device.logits(z)
    assert torch.allclose(refined_logits, device.head.logits(z))
    cloud_logits = personalised_logits(torch.from_numpy(z), torch.from_numpy(global_theta()), C)
    assert accuracy(refined_logits, y) > max(0.95, accuracy(cloud_logits, y) + 0.05)


def test_a_restored_theta_is_refined_offline():
    online = Personalizer(FixedTheta(global_theta()), D, C, None, alpha=1.0, min_window=32)
    online.logits(shifted_clips(40, seed=10)[0])
    assert online.refined
    offline = Personalizer(
        FixedTheta(global_theta(), reachable=False), D, C, None, alpha=1.0, min_window=32
    )
    offline.restore(online.snapshot.__class__(**{**online.snapshot.__dict__, "refined": None}))
    offline.logits(shifted_clips(40, seed=11)[0])
    assert offline.stale  # the refresh a restored Θ asks for failed ...
    assert offline.refined  # ... and the device refined the cached Θ by itself


def test_refinement_can_be_switched_off():
    device = Personalizer(FixedTheta(global_theta()), D, C, None, alpha=1.0, refinement=None)
    z, _ = shifted_clips(64, seed=12)
    logits = device.logits(z)
    assert not device.refined
    assert torch.allclose(
        logits, personalised_logits(torch.from_numpy(z), torch.from_numpy(global_theta()), C)
    )


def test_the_guard_checks_the_refined_head():
    window, _ = shifted_clips(64, seed=13)
    head = refine_head(window, global_theta(), C)
    weight = torch.from_numpy(CLEAN_MEANS)
    bias = torch.from_numpy(-0.5 * (CLEAN_MEANS**2).sum(1))
    guard = HeadGuard(weight, bias)
    state = guard.refresh(window, head)
    assert state.trusted  # sharper and spread over the classes on its own window
    assert torch.allclose(guard.logits(window), head.logits(window))


def test_cross_fitted_scores_come_from_heads_that_did_not_see_the_clip():
    window, _ = shifted_clips(64, seed=30)
    scores = cross_fitted_energy(window, global_theta(), C)
    even, odd = window[0::2], window[1::2]
    loose = RefinementSettings(min_window=2)
    expected_even = energy(refine_head(odd, global_theta(), C, loose).logits(even)).numpy()
    expected_odd = energy(refine_head(even, global_theta(), C, loose).logits(odd)).numpy()
    assert np.allclose(scores[0::2], expected_even) and np.allclose(scores[1::2], expected_odd)
    # in-sample scores of the head fitted on the whole window are the optimistic ones
    in_sample = energy(refine_head(window, global_theta(), C).logits(window)).numpy()
    assert np.median(scores) > np.median(in_sample)
    with pytest.raises(ValueError, match="folds"):
        cross_fitted_energy(window[:3], global_theta(), C)


def test_a_refined_head_gets_its_offset_from_its_own_scores_at_a_higher_quantile():
    reference = np.random.default_rng(31).normal(-5.0, 1.0, 500)
    window, _ = shifted_clips(64, seed=32)
    device = Personalizer(
        FixedTheta(global_theta()), D, C, None, alpha=1.0, min_window=32,
        reference_energy=reference,
    )  # fmt: skip
    device.logits(window)
    assert device.refined and OFFSET_QUANTILE != THRESHOLD_QUANTILE
    own = energy(device.head.logits(window)).numpy()
    assert device.energy_offset == pytest.approx(energy_offset(own, reference, OFFSET_QUANTILE))
    # Θ as sent keeps its own offset, from its own scores on the window at the device's q
    theta_scores = energy(
        personalised_logits(torch.from_numpy(window), torch.from_numpy(global_theta()), C)
    )
    assert device.snapshot.energy_offset == pytest.approx(
        energy_offset(theta_scores, reference, THRESHOLD_QUANTILE)
    )
    # the cross-fitted alternative (compared on the run path) reads heads refined without
    # the clip scored
    crossed = Personalizer(
        FixedTheta(global_theta()), D, C, None, alpha=1.0, min_window=32,
        reference_energy=reference,
        refinement=RefinementSettings(cross_fitted_offset=True, offset_quantile=0.6),
    )  # fmt: skip
    crossed.logits(window)
    scores = cross_fitted_energy(window, global_theta(), C)
    assert crossed.energy_offset == pytest.approx(energy_offset(scores, reference, 0.6))
    assert crossed.energy_offset != pytest.approx(device.energy_offset)


def test_a_restored_theta_waits_for_the_window_a_refresh_needs():
    online = Personalizer(FixedTheta(global_theta()), D, C, None, alpha=1.0, min_window=32)
    online.logits(shifted_clips(40, seed=40)[0])
    restored = Personalizer(
        FixedTheta(global_theta(), reachable=False), D, C, None, alpha=1.0, min_window=64
    )
    restored.restore(online.snapshot.__class__(**{**online.snapshot.__dict__, "refined": None}))
    restored.logits(shifted_clips(40, seed=41)[0])
    assert not restored.refined  # 40 clips: enough to refine, not the 64 a refresh needs
    restored.logits(shifted_clips(24, seed=42)[0])
    assert restored.refined  # 64 clips: refined, offline


def test_the_refined_head_survives_a_restart_and_only_for_its_own_theta(tmp_path):
    state = DeviceState(tmp_path / "state")
    keyring = DeviceKeyring(state)
    device = keyring.personalizer(
        FixedTheta(global_theta()), "cloud:1", "dev", D, C, model_key="m",
        settings=PersonalizationSettings(alpha=1.0, encrypted=False), min_window=32,
    )  # fmt: skip
    device.logits(shifted_clips(64, seed=50)[0])  # refresh + refinement, saved by the keyring
    assert device.refined
    restored = DeviceKeyring(state).cached_theta()
    assert restored is not None and restored.snapshot.refined is not None
    z, _ = shifted_clips(20, seed=51)
    saved, loaded = device.snapshot.refined, restored.snapshot.refined
    assert torch.allclose(loaded.head.logits(z), saved.head.logits(z))
    assert loaded.energy_offset == saved.energy_offset
    assert loaded.score_reference == pytest.approx(saved.score_reference)
    # a refined head saved for another Θ, or a damaged file, is not used
    other = global_theta() + 0.1
    assert refined_from_bytes(refined_to_bytes(saved, global_theta()), other) is None
    assert refined_from_bytes(b"not an npz", global_theta()) is None
    (state.root / REFINED_FILE).write_bytes(b"damaged")
    assert DeviceKeyring(state).cached_theta().snapshot.refined is None
    # the run's Personalizer starts with the refined head, offline
    offline = DeviceKeyring(state).personalizer(
        FixedTheta(global_theta(), reachable=False), "cloud:1", "dev", D, C, model_key="m",
        settings=PersonalizationSettings(alpha=1.0, encrypted=False),
    )  # fmt: skip
    assert offline.snapshot is not None and not offline.refined  # the damaged file


class FamiliarCloud(FixedTheta):
    """A cloud whose H sends a familiarity reference, its bytes only when not yet held."""

    def __init__(self, theta: np.ndarray, reference: FamiliarityReference, data=None) -> None:
        super().__init__(theta)
        self.reference, self.data, self.held = reference, data, []

    def personalize(
        self,
        alpha,
        indices,
        encrypted=None,
        plain=None,
        familiarity_sha256="",
        embedding_kind="none",
    ) -> PersonalizeReply:
        self.held.append(familiarity_sha256)
        reply = super().personalize(alpha, indices, plain=plain)
        sha = self.reference.sha256
        data = b"" if familiarity_sha256 == sha else (self.data or self.reference.to_bytes())
        return reply._replace(familiarity_sha256=sha, familiarity=data)


def reference_around(window: np.ndarray, offset: float) -> FamiliarityReference:
    """Ten training devices; the first sits ``offset`` away from the window's mean."""
    rng = np.random.default_rng(60)
    means = window.mean(0) + offset * np.eye(D)[0] + rng.normal(0.0, 1.0, (10, D))
    means[0] = window.mean(0) + offset * np.eye(D)[0]
    return familiarity_reference(means)


def test_on_a_familiar_camera_theta_classifies_and_the_refined_head_scores():
    window, _ = shifted_clips(64, seed=61)
    cloud = FamiliarCloud(global_theta(), reference_around(window, 0.0))
    device = Personalizer(cloud, D, C, None, alpha=1.0, min_window=32)
    device.logits(window)
    assert device.refined and device.familiarity is not None
    head, refined = device.head, device.snapshot.refined
    assert head.classify_with_cloud and refined.familiarity == pytest.approx(0.0, abs=1e-5)
    z, _ = shifted_clips(200, seed=62)
    theta_logits = personalised_logits(torch.from_numpy(z), torch.from_numpy(global_theta()), C)
    assert torch.equal(head.logits(z).argmax(1), theta_logits.argmax(1))
    plain = refine_head(window, global_theta(), C)  # the same EM, its own classes
    assert torch.allclose(energy(head.logits(z)), energy(plain.logits(z)))
    assert not torch.equal(plain.logits(z).argmax(1), theta_logits.argmax(1))
    # the next refresh says which reference it holds, and keeps it
    device.refresh("test")
    assert cloud.held == ["", device.familiarity.sha256] and device.familiarity is not None


def test_on_an_unfamiliar_camera_the_refined_head_classifies():
    window, _ = shifted_clips(64, seed=63)
    reference = reference_around(window, 50.0)
    device = Personalizer(FamiliarCloud(global_theta(), reference), D, C, None, alpha=1.0)
    device.logits(window)
    assert device.refined and not device.head.classify_with_cloud
    assert device.snapshot.refined.familiarity > FAMILIAR_RATIO
    # switched off: the refined head classifies on the familiar camera too
    familiar = FamiliarCloud(global_theta(), reference_around(window, 0.0))
    off = Personalizer(familiar, D, C, None, alpha=1.0, familiar_ratio=None)
    off.logits(window)
    assert off.refined and not off.head.classify_with_cloud
    with pytest.raises(ValueError, match="familiar_ratio"):
        Personalizer(familiar, D, C, None, familiar_ratio=0.0)


def test_a_damaged_reference_is_ignored_with_a_warning_and_theta_still_arrives():
    window, _ = shifted_clips(64, seed=64)
    reference = reference_around(window, 0.0)
    cloud = FamiliarCloud(global_theta(), reference, data=reference.to_bytes()[:-4])
    device = Personalizer(cloud, D, C, None, alpha=1.0)
    with pytest.warns(UserWarning, match="familiarity reference"):
        device.logits(window)
    assert device.theta is not None and device.familiarity is None
    assert device.refined and not device.head.classify_with_cloud


def test_the_reference_and_the_gate_survive_a_restart(tmp_path):
    window, _ = shifted_clips(64, seed=65)
    reference = reference_around(window, 0.0)
    state = DeviceState(tmp_path / "state")
    device = DeviceKeyring(state).personalizer(
        FamiliarCloud(global_theta(), reference), "cloud:1", "dev", D, C, model_key="m",
        settings=PersonalizationSettings(alpha=1.0, encrypted=False), min_window=32,
    )  # fmt: skip
    device.logits(window)
    assert device.head.classify_with_cloud
    restored = DeviceKeyring(state).personalizer(
        FixedTheta(global_theta(), reachable=False), "cloud:1", "dev", D, C, model_key="m",
        settings=PersonalizationSettings(alpha=1.0, encrypted=False),
    )  # fmt: skip
    assert restored.familiarity is not None and restored.familiarity.sha256 == reference.sha256
    assert restored.refined and restored.head.classify_with_cloud
    assert restored.snapshot.refined.familiarity == pytest.approx(0.0, abs=1e-5)
    # a damaged reference file is dropped (the cloud sends it again at the next refresh)
    (state.root / FAMILIARITY_FILE).write_bytes(b"damaged")
    assert DeviceKeyring(state).cached_theta().snapshot.familiarity is None
