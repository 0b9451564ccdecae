"""Expectation Backpropagation vs backprop on the five text tasks, one pass and the reference's.

The reference driver (RunMe.m) trains :data:`REFERENCE_PASSES` passes; the
first comparison here used one. Every fold trains EBP for the larger pass count
and reads its test error after each pass; BP's constant learning rate is chosen
separately for each pass count on a validation part of the training fold, then
BP is retrained on the whole fold with that rate and the same number of passes.
Pass 1 is bit-identical to the one-pass protocol (same seeds and order).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from server.training.ebp import (
    BP_LEARNING_RATES,
    REFERENCE_PASSES,
    bp_predict,
    error_rate,
    fold_indices,
    init_ebp_network,
    select_bp_learning_rates,
    train_bp_passes,
    train_ebp_epoch,
)
from shared.methods.ebp_data import EBP_TASKS, load_ebp_task

READ_OUTS = ("ebp_d", "ebp_p", "bp")


def _summary(values: list[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_fold": values}


def evaluate_task(
    task: str,
    folds: list[int],
    passes: tuple[int, ...] = (1,),
    hidden: int = 120,
    batch_size: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """EBP-D, EBP-P and BP test error after each pass count in ``passes`` (folds of 8-fold CV)."""
    x, y = load_ebp_task(task)
    splits = fold_indices(y, 8, seed)
    most = max(passes)
    rows = {p: {key: [] for key in (*READ_OUTS, "bp_lr")} for p in passes}
    seconds = {"ebp": 0.0, "bp_sweep_and_final": 0.0}
    for fold in folds:
        train_idx, test_idx = splits[fold]
        x_tr, y_tr, x_te, y_te = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
        start = time.perf_counter()
        net = init_ebp_network([x.shape[1], hidden, 1], seed + fold)
        for p in range(1, most + 1):
            train_ebp_epoch(net, x_tr, y_tr, batch_size, seed + fold + 1000 * (p - 1))
            if p in passes:
                rows[p]["ebp_d"].append(error_rate(net.predict(x_te, "deterministic"), y_te))
                rows[p]["ebp_p"].append(error_rate(net.predict(x_te, "probabilistic"), y_te))
        seconds["ebp"] += time.perf_counter() - start
        start = time.perf_counter()
        best, _ = select_bp_learning_rates(x_tr, y_tr, hidden, batch_size, seed + fold, most)
        for p in passes:
            lr = best[p - 1]
            *_, params = train_bp_passes(x_tr, y_tr, hidden, lr, batch_size, seed + fold, p)
            rows[p]["bp"].append(error_rate(bp_predict(params, x_te), y_te))
            rows[p]["bp_lr"].append(lr)
        seconds["bp_sweep_and_final"] += time.perf_counter() - start
    by_passes = {
        str(p): {
            **{key: _summary(rows[p][key]) for key in READ_OUTS},
            "bp_chosen_lr": rows[p]["bp_lr"],
        }
        for p in passes
    }
    return {"folds": folds, "seconds": seconds, "passes": by_passes}


def benchmark(quick: bool) -> dict[str, Any]:
    """Test error of EBP-D / EBP-P / BP per task, after one pass and after the reference's.

    quick: reuters_I654_I65, fold 0, one pass (≈ 25 s of CPU; same numbers as
    before passes were added). full: all five tasks, folds 0–2 of 8, passes 1 and
    :data:`REFERENCE_PASSES` (about an hour of CPU, one thread).
    """
    torch.set_num_threads(1)
    tasks = ("reuters_I654_I65",) if quick else EBP_TASKS
    folds = [0] if quick else [0, 1, 2]
    passes = (1,) if quick else (1, REFERENCE_PASSES)
    start = time.perf_counter()
    results = {}
    for task in tasks:
        print(f"[bench.hub.ebp] {task} folds {folds} passes {passes}", flush=True)
        results[task] = evaluate_task(task, folds, passes)
    return {
        "protocol": "1 hidden layer of 120, minibatch 10, stratified 8-fold CV; "
        f"passes {list(passes)} (reference driver: {REFERENCE_PASSES})",
        "epochs": list(passes),
        "reference_passes": REFERENCE_PASSES,
        "bp_learning_rates": list(BP_LEARNING_RATES),
        "tasks": results,
        "total_seconds": time.perf_counter() - start,
    }


def _cell(result: dict[str, Any]) -> str:
    return f"{100 * result['mean']:.1f} ± {100 * result['std']:.1f}"


def table(results: dict[str, Any], passes: str) -> str:
    """One row per task: test error (%) mean ± std over folds after ``passes`` passes."""
    lines = [
        "| task | folds | EBP-D | EBP-P | BP (LR tuned for these passes) | BP LRs chosen |",
        "|---|---|---|---|---|---|",
    ]
    for task, res in results.items():
        by_passes = res.get("passes", {"1": res})  # results saved before passes existed
        if passes not in by_passes:
            continue
        row = by_passes[passes]
        lrs = ", ".join(f"{lr:.2g}" for lr in sorted(set(row["bp_chosen_lr"])))
        cells = " | ".join(_cell(row[key]) for key in READ_OUTS)
        lines.append(f"| {task} | {len(res['folds'])} | {cells} | {lrs} |")
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> str:
    """One table per pass count."""
    counts = r.get("epochs", [1])
    parts = [
        f"Protocol: {r['protocol']}. Test error %, mean ± std over folds "
        f"({r['total_seconds'] / 60:.0f} min in all)."
    ]
    for p in counts:
        label = "one pass" if p == 1 else f"{p} passes (the reference driver's protocol)"
        parts.append(f"**{label}**\n\n" + table(r["tasks"], str(p)))
    earlier = r.get("one_pass_8_fold")
    if earlier:
        parts.append(
            "**one pass, all 8 folds** (the earlier full run; on the folds above it gives the "
            "same one-pass numbers, bit for bit)\n\n" + table(earlier["tasks"], "1")
        )
    return "\n\n".join(parts)


if __name__ == "__main__":
    import json
    import sys

    # one task and its folds by hand: python -m bench.hub.ebp TASK FOLD[,FOLD…] PASSES[,…]
    name, fold_list, pass_list = sys.argv[1:4]
    torch.set_num_threads(1)
    out = evaluate_task(
        name, [int(f) for f in fold_list.split(",")], tuple(int(p) for p in pass_list.split(","))
    )
    print(json.dumps(out))
