"""The personalised head's Energy threshold: an offset computed at refresh, kept with Θ.

A real plaintext Personalizer, keyring and PersonalHead; only the gateway is a stand-in
that answers with a chosen Θ (the real gRPC path is covered in test_personalize.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixed_theta import BIAS, WEIGHT, WINDOW, FixedTheta, clips, guarded_head, run_stream

from device_client.gateway_client import PersonalizeReply
from device_client.keyring import THETA_FILE, DeviceKeyring, PersonalizationSettings
from device_client.personal_head import PersonalHead, reference_energy
from device_client.personalization import energy_offset
from device_client.runtime import DeviceRuntime
from device_client.state import DeviceState
from shared.ood.energy import energy
from shared.pipeline import OODPipeline

BASE_THRESHOLD = -3.0


def global_energy(z: np.ndarray) -> np.ndarray:
    return energy(torch.from_numpy(z) @ WEIGHT.double().T + BIAS.double()).numpy()


REFERENCE = clips(40, seed=99)


def personal_head(tmp_path, theta: FixedTheta | None, quantile: float = 0.5) -> PersonalHead:
    """A guarded personalised head with the global head's Energy on REFERENCE as anchor."""
    return guarded_head(
        tmp_path / "state",
        theta,
        energy_threshold=BASE_THRESHOLD,
        reference_energy=global_energy(REFERENCE),
        threshold_quantile=quantile,
    )


@pytest.mark.parametrize("quantile", [0.3, 0.5])
def test_a_head_with_shifted_energy_gets_a_threshold_shifted_by_as_much(tmp_path, quantile):
    # Adding c to every logit lowers every Energy by exactly c; the window is the
    # reference itself, so the offset must be exactly -c whatever the quantile.
    offsets = {}
    for shift in (2.5, -1.0):
        head = personal_head(tmp_path / str(shift), FixedTheta(WEIGHT, BIAS + shift), quantile)
        head.personalizer.observe(REFERENCE[:WINDOW])
        head.personalizer.refresh("test")
        window_energy = global_energy(REFERENCE[:WINDOW]) - shift
        expected = float(
            np.quantile(window_energy, quantile) - np.quantile(global_energy(REFERENCE), quantile)
        )
        assert head.personalizer.energy_offset == pytest.approx(expected, abs=1e-9)
        offsets[shift] = head.personalizer.energy_offset
    assert offsets[-1.0] - offsets[2.5] == pytest.approx(3.5, abs=1e-9)


def test_energy_offset_is_zero_for_the_global_head_on_its_own_reference():
    ref = global_energy(REFERENCE)
    assert energy_offset(ref, ref, 0.4) == 0.0
    assert energy_offset(ref - 1.25, ref, 0.4) == pytest.approx(-1.25, abs=1e-12)
    with pytest.raises(ValueError, match="quantile"):
        energy_offset(ref, ref, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        energy_offset(np.array([]), ref, 0.5)


def test_verdicts_of_a_shifted_head_match_the_global_heads(tmp_path, tiny_bundle):
    # The tiny bundle's own head, shifted by c: with the offset the personalised head
    # flags exactly the clips the global head flags; with the model's threshold it would not.
    runtime = DeviceRuntime(tiny_bundle)
    fused = tiny_bundle.model.fused_head
    weight, bias = fused.weight.detach(), fused.bias.detach()
    d, c = weight.shape[1], weight.shape[0]
    shift = 3.0
    keyring = DeviceKeyring(DeviceState(tmp_path / "state"))
    reply = PersonalizeReply(
        [], torch.cat([weight.T.reshape(-1), bias + shift]).double().tolist(),
        "hypernetwork", 1, "ab" * 32, d, c, 0.0, 1, 1,
    )  # fmt: skip
    transport = type("Stub", (), {"personalize": lambda self, *a, **k: reply})()
    personalizer = keyring.personalizer(
        transport, "cloud:1", "dev", d, c, model_key="m",
        settings=PersonalizationSettings(encrypted=False), window=60, min_window=60,
        reference_energy=reference_energy(tiny_bundle),
        refinement=None,  # Θ as the cloud sent it: the offset of Θ itself is checked here
    )  # fmt: skip
    # the window is the reference itself: only the shift separates the two heads' Energy
    personalizer.observe(tiny_bundle.reference_features.double().numpy())
    personalizer.refresh("test")
    assert personalizer.energy_offset == pytest.approx(-shift, abs=1e-5)
    base = tiny_bundle.thresholds["energy"]
    head = PersonalHead(personalizer, keyring, energy_threshold=base)

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 8, 32, 32, 3), dtype=np.uint8)
    global_verdicts = runtime.score_clips(frames)
    personal = runtime.score_clips(frames, head=head)
    assert personal.threshold == pytest.approx(base - shift, abs=1e-5)
    assert torch.allclose(personal.ood_score, global_verdicts.ood_score - shift, atol=1e-4)
    assert torch.equal(personal.is_ood, global_verdicts.is_ood)
    # an explicit threshold wins over the head's
    forced = runtime.score_clips(frames, head=head, threshold=1e9)
    assert forced.threshold == 1e9 and not forced.is_ood.any()


def test_pipeline_threshold_override_and_bad_values(tiny_bundle):
    pipeline = OODPipeline(tiny_bundle)
    z = tiny_bundle.reference_features[:10]
    plain = pipeline.score_features(z)
    assert plain.threshold == pytest.approx(tiny_bundle.thresholds["energy"])
    low = pipeline.score_features(z, threshold=float(plain.ood_score.min()) - 1.0)
    assert bool(low.is_ood.all())
    with pytest.raises(ValueError, match="finite"):
        pipeline.score_features(z, threshold=float("nan"))


def test_the_offset_is_saved_with_theta_and_restored_offline(tmp_path):
    head = personal_head(tmp_path, FixedTheta(WEIGHT * 2.0, BIAS + 1.0))
    run_stream(head, clips(16, seed=0))
    offset = head.personalizer.energy_offset
    assert offset is not None and offset < 0  # sharper and shifted up: lower Energy
    saved = json.loads((tmp_path / "state" / THETA_FILE).read_text())
    assert saved["energy_offset"] == pytest.approx(offset)
    assert head.verdict_threshold("energy") == pytest.approx(BASE_THRESHOLD + offset)
    assert head.verdict_threshold("msp") is None  # the offset is on the Energy scale only

    offline = personal_head(tmp_path, None)  # restarted without the cloud
    assert offline.personalizer.energy_offset == pytest.approx(offset)
    run_stream(offline, clips(8, seed=1))
    assert offline.personalizer.theta_status == "stale"
    assert offline.verdict_threshold("energy") == pytest.approx(BASE_THRESHOLD + offset)
    assert offline.telemetry()["energy_threshold_offset"] == pytest.approx(offset)

    # a theta.json written before the offset existed still loads: no offset, model threshold
    del saved["energy_offset"]
    (tmp_path / "state" / THETA_FILE).write_text(json.dumps(saved))
    older = personal_head(tmp_path, None)
    assert older.personalizer.snapshot is not None and older.personalizer.energy_offset is None
    run_stream(older, clips(8, seed=2))
    assert older.verdict_threshold("energy") is None


def test_the_offset_is_dropped_when_the_guard_serves_the_global_head(tmp_path):
    wrong = WEIGHT.roll(1, 0) * 0.2  # every class moved to the next channel, and unsure
    head = personal_head(tmp_path, FixedTheta(wrong, BIAS + 5.0))
    run_stream(head, clips(16, seed=1))
    assert head.personalizer.energy_offset is not None and head.personalizer.energy_offset < -1
    assert head.clips_guard_fallback == 12 and head.describe() == "global(guard, v3)"
    assert head.threshold_offset() is None
    assert head.verdict_threshold("energy") is None  # global logits: the model's threshold
    # without the guard the same Θ is served with its offset
    unguarded = PersonalHead(head.personalizer, head.keyring, energy_threshold=BASE_THRESHOLD)
    unguarded(torch.from_numpy(clips(4, seed=5)).float())
    assert unguarded.verdict_threshold("energy") == pytest.approx(
        BASE_THRESHOLD + head.personalizer.energy_offset
    )
