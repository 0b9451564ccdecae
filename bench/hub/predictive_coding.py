"""Predictive coding (IL, Z-IL, Fa-Z-IL) vs backprop on digits, and the Z-IL exactness gap."""

from __future__ import annotations

import json
from typing import Any

import torch

from bench.report import markdown_table
from server.training.predictive_coding import (
    TRAINERS,
    ILConfig,
    Schedule,
    bp_learning_step,
    init_weights,
    load_digits_split,
    one_hot,
    pc_learning_step,
)


def max_weight_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest absolute elementwise difference over all weight matrices."""
    return max(float((wa - wb).abs().max()) for wa, wb in zip(a, b, strict=True))


def exactness_gap(rule: Schedule, n_steps: int, seed: int = 0) -> float:
    """Max |θ_PC − θ_BP| after ``n_steps`` identical float64 steps on digits batches."""
    x_tr, y_tr, _, _ = load_digits_split(torch.float64)
    t_tr = one_hot(y_tr, 10, torch.float64)
    sizes = [64, 32, 32, 10]
    pc_w, bp_w = init_weights(sizes, seed), init_weights(sizes, seed)
    for step in range(n_steps):
        idx = torch.arange(step * 8, step * 8 + 8) % len(x_tr)
        bp_learning_step(bp_w, x_tr[idx], t_tr[idx], activation="sigmoid", lr=1e-3)
        pc_learning_step(
            pc_w,
            x_tr[idx],
            t_tr[idx],
            activation="sigmoid",
            lr=1e-3,
            inference_rate=1.0,
            inference_steps=len(sizes) - 1,
            schedule=rule,
        )
    return max_weight_difference(pc_w, bp_w)


def benchmark(quick: bool) -> dict[str, Any]:
    """Digits test accuracy of BP, IL, Z-IL, Fa-Z-IL (same init) and the Z-IL exactness gap.

    ``quick``: 5 epochs (≈ 10 s on 2 CPU cores); full: 30 epochs (≈ 1 min).
    """
    torch.set_num_threads(1)
    epochs = 5 if quick else 30
    results: dict[str, Any] = {"dataset": "sklearn digits (75/25 stratified, rs 0)"}
    for trainer in TRAINERS:
        config = trainer.config_model(epochs=epochs)
        result = trainer.train(config)
        results[trainer.name] = {
            "test_accuracy": result.metrics["test_accuracy"],
            "train_seconds": result.metrics["train_seconds"],
        }
    results["config"] = ILConfig(epochs=epochs).model_dump()
    results["max_abs_weight_diff_vs_bp_100_steps"] = {
        "zil": exactness_gap("zil", 100),
        "fa_zil": exactness_gap("fa_zil", 100),
    }
    return results


def markdown(r: dict[str, Any]) -> str:
    """Accuracy table and the exactness gap."""
    rows = [
        [name, r[name]["test_accuracy"], f"{r[name]['train_seconds']:.1f}"]
        for name in ("pc_bp", "zil", "fa_zil", "il")
    ]
    gap = r["max_abs_weight_diff_vs_bp_100_steps"]
    return (
        f"{r['dataset']}; config {json.dumps(r['config'])}.\n\n"
        + markdown_table(["method", "test accuracy", "train s"], rows)
        + f"\n\nMax |weight − backprop weight| after 100 steps (float64): Z-IL {gap['zil']:.1e}, "
        f"Fa-Z-IL {gap['fa_zil']:.1e}."
    )
