"""The guard inside ``run --personalize``'s head: the global head serves when Θ looks wrong.

PersonalHead is driven as the run loop drives it (embeddings in, logits or None out) with a
real plaintext Personalizer and keyring; only the gateway is a stand-in that answers with a
chosen Θ (the real gRPC path is covered in test_personalize.py).
"""

from __future__ import annotations

import torch
from fixed_theta import BIAS, WEIGHT, FixedTheta, clips, guarded_head, run_stream

from device_client.head_guard import CONFIDENCE_SLACK
from device_client.personal_head import PersonalHead


def guarded(tmp_path, weight: torch.Tensor | None) -> PersonalHead:
    """A guarded head; ``weight`` None: offline, scoring from the cached Θ only."""
    theta = FixedTheta(weight, BIAS) if weight is not None else None
    return guarded_head(tmp_path / "state", theta)


def test_a_confident_head_that_agrees_is_kept(tmp_path):
    head = guarded(tmp_path, WEIGHT * 2.0)  # same decisions, more certain
    z = clips(16, seed=0)
    out = run_stream(head, z)
    assert out[0] is None  # warming up: global head until the window holds 8 clips
    expected = torch.from_numpy(z[4:]) @ (WEIGHT * 2.0).double().T
    assert torch.allclose(torch.cat(out[1:]).double(), expected, atol=1e-5)
    assert head.describe() == "personal(v3)" and head.clips_guard_fallback == 0
    report = head.guard_report()
    assert report["trusted"] is True and report["confidence_slack"] == CONFIDENCE_SLACK
    assert report["msp_personalised"] > report["msp_global"]
    assert head.telemetry()["guard_fallback_clips"] == 0.0


def test_a_head_less_sure_than_the_global_one_falls_back(tmp_path):
    wrong = WEIGHT.roll(1, 0) * 0.2  # every class moved to the next channel, and unsure
    head = guarded(tmp_path, wrong)
    z = clips(16, seed=1)
    out = run_stream(head, z)
    global_logits = torch.from_numpy(z[4:]) @ WEIGHT.double().T
    assert torch.allclose(torch.cat(out[1:]).double(), global_logits, atol=1e-5)
    assert head.describe() == "global(guard, v3)" and head.clips_guard_fallback == 12
    report = head.guard_report()
    assert report["trusted"] is False and report["msp_personalised"] < report["msp_global"]
    assert head.telemetry()["guard_fallback_clips"] == 12.0
    # without the guard the same Θ would have been served
    unguarded = PersonalHead(head.personalizer, head.keyring)
    assert torch.allclose(
        unguarded(torch.from_numpy(z[:4]).float()).double(),
        torch.from_numpy(z[:4]) @ wrong.double().T,
        atol=1e-5,
    )
    assert unguarded.telemetry().get("guard_fallback_clips") is None


def test_a_restored_theta_is_checked_too(tmp_path):
    wrong = WEIGHT.roll(1, 0) * 0.2
    run_stream(guarded(tmp_path, wrong), clips(12, seed=2))  # caches the wrong Θ
    offline = guarded(tmp_path, None)  # restarted without the cloud: restored Θ
    z = clips(8, seed=3)
    out = [offline(torch.from_numpy(row[None]).float()) for row in z]  # camera: one clip a time
    assert offline.personalizer.theta_status == "stale"
    assert torch.allclose(
        torch.cat(out).double(), torch.from_numpy(z) @ WEIGHT.double().T, atol=1e-5
    )
    assert offline.describe() == "global(guard, v3 stale)" and offline.clips_guard_fallback == 8
