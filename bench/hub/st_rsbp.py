"""ST-RSBP vs BPTT on the same recurrent spiking network: rows-over-time and Poisson digits."""

from __future__ import annotations

from typing import Any

import torch

from bench.report import markdown_table
from server.training.st_rsbp import BPTT_TRAINER, TRAINER, RSNNConfig

EPOCHS = 20
QUICK_EPOCHS = 3


def benchmark(quick: bool) -> dict[str, Any]:
    """Test accuracy, train seconds and bytes kept for the backward pass, per task and rule."""
    torch.set_num_threads(1)
    epochs = QUICK_EPOCHS if quick else EPOCHS
    results: dict[str, Any] = {}
    for task in ("rows", "poisson"):
        results[task] = {}
        for trainer in (TRAINER, BPTT_TRAINER):
            config = RSNNConfig(task=task, epochs=epochs)
            metrics = trainer.train(config).metrics
            results[task][trainer.name] = {
                key: metrics[key]
                for key in (
                    "test_accuracy",
                    "train_accuracy",
                    "train_seconds",
                    "peak_backward_bytes_per_batch",
                )
            }
    return {
        "dataset": "sklearn digits 8x8, stratified 75/25 split, random_state 0",
        "config": RSNNConfig(epochs=epochs).model_dump(),
        "results": results,
    }


def markdown(r: dict[str, Any]) -> str:
    """One row per (task, rule)."""
    rows = [
        [
            task,
            name,
            m["test_accuracy"],
            f"{m['train_seconds']:.1f}",
            f"{m['peak_backward_bytes_per_batch'] / 2**20:.2f}",
        ]
        for task, by_rule in r["results"].items()
        for name, m in by_rule.items()
    ]
    cfg = r["config"]
    return (
        f"{r['dataset']}; hidden {cfg['hidden']} recurrent LIF, {cfg['time_steps']} steps, "
        f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, Adam {cfg['lr']}. Memory: bytes "
        "kept between forward and backward per batch (BPTT: tensors autograd saved; ST-RSBP: "
        "the recorded traces and S-PSP matrices).\n\n"
        + markdown_table(["task", "rule", "test accuracy", "train s", "backward MiB"], rows)
    )
