"""Boolean backprop: exact truth tables, binarised digits vs an STE BNN, packed vs float speed."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bench.report import markdown_table, median_seconds
from server.training.boolean_bp import (
    TRAINER,
    BooleanBPConfig,
    accuracy,
    boolean_backprop_step,
    init_boolean_network,
)
from server.training.ste_bnn import train_ste_bnn
from shared.methods.boolean_data import load_boolean_task

#: truth-table settings (small batches, the narrowest veto margin); seeds tried per task
TABLE_CONFIG = {"hidden_sizes": [16], "epochs": 500, "batch_size": 8, "margin": 1, "anneal": False}
SEEDS = (0, 1, 2, 3, 4)
#: digits settings, chosen on a validation fifth of the training split
DIGITS_CONFIG = {"hidden_sizes": [128], "epochs": 16}


def truth_tables(seeds: tuple[int, ...]) -> dict[str, Any]:
    """Per task: accuracy on its full truth table for each seed, and epochs to get there."""
    out: dict[str, Any] = {}
    for task in ("parity3", "comparator4", "comparator8"):
        runs = []
        for seed in seeds:
            epochs = TABLE_CONFIG["epochs"] if task != "comparator8" else 200
            config = BooleanBPConfig(task=task, seed=seed, **{**TABLE_CONFIG, "epochs": epochs})
            metrics = TRAINER.train(config).metrics
            runs.append({"accuracy": metrics["test_accuracy"], "epochs": metrics["epochs_run"]})
        out[task] = {
            "runs": runs,
            "exact_runs": sum(r["accuracy"] == 1.0 for r in runs),
            "mean_accuracy": float(np.mean([r["accuracy"] for r in runs])),
        }
    return out


def throughput(repeats: int) -> dict[str, float]:
    """Samples/s of inference and of one training step, bit-packed vs float, same network."""
    data = load_boolean_task("digits")
    x, y = data.x_train[:256], data.y_train[:256]
    result: dict[str, float] = {}
    for backend in ("packed", "float"):
        net = init_boolean_network([64, 128, 10], 0, backend)  # type: ignore[arg-type]
        rng = np.random.default_rng(0)
        infer = median_seconds(lambda n=net: n.predict(x), repeats=repeats)
        step = median_seconds(
            lambda n=net, r=rng: boolean_backprop_step(n, x[:32], y[:32], r, 0.0), repeats=repeats
        )
        result[f"{backend}_inference_samples_per_s"] = len(x) / infer
        result[f"{backend}_train_samples_per_s"] = 32 / step
    result["inference_packed_over_float"] = (
        result["packed_inference_samples_per_s"] / result["float_inference_samples_per_s"]
    )
    result["train_packed_over_float"] = (
        result["packed_train_samples_per_s"] / result["float_train_samples_per_s"]
    )
    return result


def benchmark(quick: bool) -> dict[str, Any]:
    """Truth tables (exactness over seeds), digits vs STE BNN, packed vs float throughput."""
    torch.set_num_threads(1)
    seeds = SEEDS[:2] if quick else SEEDS
    tables = truth_tables(seeds)
    data = load_boolean_task("digits")
    epochs = 4 if quick else DIGITS_CONFIG["epochs"]
    started = time.perf_counter()
    boolean = TRAINER.train(BooleanBPConfig(**{**DIGITS_CONFIG, "epochs": epochs})).metrics
    sizes = [64, *DIGITS_CONFIG["hidden_sizes"], 10]
    started = time.perf_counter()
    ste = train_ste_bnn(data.x_train, data.y_train, sizes, epochs)
    ste_seconds = time.perf_counter() - started
    return {
        "parity3_accuracy": tables["parity3"]["mean_accuracy"],
        "truth_tables": tables,
        "seeds": list(seeds),
        "digits": {
            "sizes": sizes,
            "epochs": epochs,
            "boolean_bp": {
                "test_accuracy": boolean["test_accuracy"],
                "train_accuracy": boolean["train_accuracy"],
                "train_seconds": boolean["train_seconds"],
            },
            "ste_bnn": {
                "test_accuracy": accuracy(ste, data.x_test, data.y_test),
                "train_accuracy": accuracy(ste, data.x_train, data.y_train),
                "train_seconds": ste_seconds,
            },
        },
        "throughput": throughput(3 if quick else 7),
    }


def markdown(r: dict[str, Any]) -> str:
    """Truth tables, digits, speed."""
    tables = [
        [task, f"{t['exact_runs']}/{len(t['runs'])}", t["mean_accuracy"]]
        for task, t in r["truth_tables"].items()
    ]
    d = r["digits"]
    digits = [
        [name, d[name]["test_accuracy"], f"{d[name]['train_seconds']:.1f}"]
        for name in ("boolean_bp", "ste_bnn")
    ]
    t = r["throughput"]
    speed = [
        [
            path,
            f"{t[f'{path}_inference_samples_per_s']:.0f}",
            f"{t[f'{path}_train_samples_per_s']:.0f}",
        ]
        for path in ("packed", "float")
    ]
    return (
        "Truth tables (training set = test set = the whole table), seeds "
        f"{r['seeds']}:\n\n"
        + markdown_table(["task", "exact runs", "mean accuracy"], tables)
        + f"\n\nBinarised digits, network {d['sizes']}, {d['epochs']} epochs:\n\n"
        + markdown_table(["method", "test accuracy", "train s"], digits)
        + "\n\nSame network and rule, bit-packed vs float32 kernels (one thread; shared machine, "
        "rely on the ratio):\n\n"
        + markdown_table(["path", "inference samples/s", "train samples/s"], speed)
        + f"\n\nPacked / float: inference {t['inference_packed_over_float']:.2f}x, "
        f"training {t['train_packed_over_float']:.2f}x."
    )
