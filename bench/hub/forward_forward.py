"""FF-SNN vs FF (ReLU) vs BP-SNN on digits, static and Poisson input."""

from __future__ import annotations

from typing import Any

import torch

from bench.report import markdown_table
from server.training.forward_forward import TRAINERS

#: tuned settings (same 2x500 size for all three methods)
BENCHMARK_CONFIGS: dict[str, dict[str, Any]] = {
    "ff_snn": {"hidden_sizes": [500, 500], "epochs": 30, "lr": 3e-3},
    "ff": {"hidden_sizes": [500, 500], "epochs": 30, "lr": 3e-3},
    "bp_snn": {"hidden_sizes": [500, 500], "epochs": 30, "lr": 1e-3},
}
QUICK_EPOCHS = 8
BENCHMARK_ENCODINGS = ("static", "poisson")


def benchmark(quick: bool = False) -> dict[str, Any]:
    """Test accuracy and train seconds of ff_snn, ff and bp_snn on digits, static and Poisson.

    ``quick`` trains each for ``QUICK_EPOCHS`` epochs instead of the tuned count.
    Returns ``{"results": {encoding: {method: metrics}}, "ff_snn_minus_bp_snn": {...}, ...}``.
    """
    torch.set_num_threads(1)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for encoding in BENCHMARK_ENCODINGS:
        results[encoding] = {}
        for name, settings in BENCHMARK_CONFIGS.items():
            trainer = TRAINERS[name]
            overrides = {"encoding": encoding, **({"epochs": QUICK_EPOCHS} if quick else {})}
            config = trainer.config_model(**{**settings, **overrides})
            metrics = trainer.train(config).metrics
            results[encoding][name] = {
                "test_accuracy": metrics["test_accuracy"],
                "train_seconds": metrics["train_seconds"],
                "epochs": config.epochs,
            }
    gaps = {
        enc: results[enc]["ff_snn"]["test_accuracy"] - results[enc]["bp_snn"]["test_accuracy"]
        for enc in BENCHMARK_ENCODINGS
    }
    return {
        "dataset": "sklearn digits 8x8, stratified 75/25 split, random_state 0",
        "time_steps": 10,
        "quick": quick,
        "results": results,
        "ff_snn_minus_bp_snn": gaps,
    }


def markdown(r: dict[str, Any]) -> str:
    """One row per (input, method)."""
    rows = []
    for encoding, by_method in r["results"].items():
        for method, m in by_method.items():
            rows.append([encoding, method, m["test_accuracy"], f"{m['train_seconds']:.1f}"])
    gap = r["ff_snn_minus_bp_snn"]
    return (
        f"{r['dataset']}, {r['time_steps']} time steps.\n\n"
        + markdown_table(["input", "method", "test accuracy", "train s"], rows)
        + "\n\nFF-SNN − BP-SNN: "
        + ", ".join(f"{enc} {100 * v:+.1f} points" for enc, v in gap.items())
    )
