"""The personalisation bench's per-population summary: gap to fine-tuning, worst device."""

from __future__ import annotations

import pytest

from bench.personalization import HEADS, guard_markdown, unseen_block, unseen_markdown


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


def test_guard_markdown_shows_the_sweep_and_old_vs_new_decisions_per_device():
    device = {
        "shift": "a@4",
        "global": {"id_acc": 0.2, "near_auroc": 0.5},
        "personalised": {"id_acc": 0.4, "near_auroc": 0.6},
    }
    results = {
        "guard_rule": {"signal": "information", "slack": 0.05},
        "guard_rule_old": {"signal": "msp", "slack": 0.05},
        "guard_signal_rank_correlation": {"msp": 0.06, "information": 0.5},
        "guard_validation_devices": {"standard": 16, "hard": ["x", "y"]},
        "guard_validation_sweep": [
            {
                "signal": "msp",
                "slack": None,
                "val_accuracy": 0.9,
                "val_accuracy_own": 0.95,
                "val_accuracy_other": 0.85,
                "worst_delta": -0.1,
                "kept_own": 3,
                "kept_other": 3,
                "cases_per_kind": 3,
            }
        ],
        "unseen_hard": {
            "guarded_old": {},
            "devices": [device],
            "guard": [{"guarded_old": {"trusted": False}, "guarded": {"trusted": True}}],
        },
    }
    text = guard_markdown(results)
    assert "Chosen: **information, slack 0.05**; old device rule: msp, slack 0.05" in text
    assert "information +0.50" in text and "| msp | no check | 0.9000 |" in text
    assert "old guard kept 0 of 1, chosen rule kept 1 of 1" in text
    assert "| a@4 | no / yes | 0.200 / 0.400 |" in text
