"""The personalisation bench's per-population summary: gap to fine-tuning, worst device."""

from __future__ import annotations

import pytest

from bench.personalization import HEADS, unseen_block, unseen_markdown


def _row(acc: float, near: float, far: float) -> dict[str, float]:
    return {"id_accuracy": acc, "near_auroc": near, "far_auroc": far}


def test_unseen_block_reports_gap_to_finetuning_and_the_worst_device():
    devices = [
        {"shift": "a@4", "families": ("visibility",)},
        {"shift": "b@5", "families": ("noise",)},
    ]
    values = {
        "global": [_row(0.5, 0.6, 0.5), _row(0.9, 0.8, 0.7)],
        "personalised": [_row(0.7, 0.7, 0.6), _row(0.85, 0.82, 0.72)],
        "finetuned": [_row(0.9, 0.8, 0.8), _row(1.0, 0.9, 0.8)],
    }
    rows = {k: values.get(k, values["personalised"]) for k in HEADS}
    block = unseen_block(devices, rows, guard_log=[])

    assert block["personalised"]["id_acc"] == pytest.approx(0.775)
    assert block["personalised_gap_to_finetuned"]["id_acc"] == pytest.approx(0.175)
    assert block["personalised_gap_to_finetuned"]["near_hard_auroc"] is None
    worst = block["personalised_worst_vs_global"]
    assert worst["id_acc"]["device"] == "b@5"
    assert worst["id_acc"]["delta"] == pytest.approx(-0.05)
    assert worst["near_auroc"]["device"] == "b@5"
    assert worst["near_auroc"]["delta"] == pytest.approx(0.02)
    assert block["held_out_family_devices"] == 1
    text = unseen_markdown(block)
    assert "| gap: fine-tuned − SecDOOD | +0.175 |" in text
    assert "-0.050 (b@5)" in text
