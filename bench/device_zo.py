"""Few-shot personalisation by zeroth-order optimisation (``bench/device.py``'s ``zo``).

A prompt vector added to the embedding z plus the fused head's bias are fitted on 5 labelled
clips per class of a corrupted domain: plain ZO vs subspace ZO vs backprop, loss against forward
passes. Honest settings: ZO-Adam's learning rate and the subspace ring-buffer length tau are
chosen on *validation* tasks (``val`` clips, validation corruption types); the test tasks
(``test`` clips, held-out corruption types) run once, plain vs the chosen tau.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from device_client.measure import clip_subset, clip_tensors
from device_client.runtime import load_model
from device_client.subspace import SubspaceGradient
from device_client.zo import ZOAdam, ZOEstimator, zo_minimise
from shared.data.adaptation_shifts import ADAPTATION_CLIP_SPLIT
from shared.data.corruptions import DEVICE_SHIFT_SEVERITY, corrupt_clipset

#: Few-shot domains per part of the adaptation split (shared/data/adaptation_shifts.py).
ZO_TASKS: dict[str, tuple[str, ...]] = {
    "validation": ("brightness", "impulse_noise", "fog"),
    "test": ("contrast", "shot_noise", "pixelate"),
}
#: ZO-Adam learning rates tried on validation (first = ZOODiP's 1e-2 for a token).
ZO_LRS = (1e-2, 3e-3, 3e-2)
#: Subspace ring-buffer lengths tried on validation (128 = DESIGN default; smaller = early fits).
ZO_TAUS = (128, 32, 16)
ZO_EPS = 1e-3
ZO_SEEDS = 3
SHOTS = 5
HISTORY_POINTS = 300  # points per curve kept in the JSON / plot (summaries use the full curve)


def passes_to_reach(history: list[tuple[int, float]], target: float) -> int | None:
    """First forward-pass count at which the loss is <= ``target`` (None: never)."""
    return next((p for p, value in history if value <= target), None)


def thin_history(history: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """At most :data:`HISTORY_POINTS` (+1) points of ``history``, first and last kept."""
    stride = max(1, -(-len(history) // HISTORY_POINTS))
    return history[::stride] + ([history[-1]] if (len(history) - 1) % stride else [])


def few_shot_task(float_path: Path, part: str, corruption: str):
    """Embeddings of a corrupted domain: ``SHOTS`` labelled clips per class + a held-out set."""
    base = clip_subset(ADAPTATION_CLIP_SPLIT[part], 400, 4)
    clips = corrupt_clipset(base, corruption, DEVICE_SHIFT_SEVERITY)
    model = load_model(float_path).model
    rgb, flow, labels = clip_tensors(clips)
    with torch.inference_mode():
        z = model.embed(rgb, flow)
    head = model.fused_head
    train_idx = np.concatenate(
        [np.flatnonzero(clips.labels == c)[:SHOTS] for c in np.unique(clips.labels)]
    )
    test_mask = np.ones(len(clips), bool)
    test_mask[train_idx] = False
    return z, labels, train_idx, test_mask, head.weight.detach(), head.bias.detach()


def run_task(
    float_path: Path, part: str, corruption: str, steps: int, lr: float, taus
) -> dict[str, Any]:
    """Plain ZO, subspace ZO (one run per tau) and backprop on one corrupted few-shot task."""
    z, labels, train_idx, test_mask, weight, bias = few_shot_task(float_path, part, corruption)
    zt, yt = z[train_idx], labels[train_idx]
    d_embed = z.shape[1]

    def logits(theta: Tensor, feats: Tensor) -> Tensor:
        return (feats + theta[:d_embed]) @ weight.T + bias + theta[d_embed:]

    def loss(theta: Tensor) -> float:
        return float(torch.nn.functional.cross_entropy(logits(theta, zt), yt))

    def accuracy(theta: Tensor) -> float:
        pred = logits(theta, z[test_mask]).argmax(1)
        return float((pred == labels[test_mask]).float().mean())

    theta0 = torch.zeros(d_embed + weight.shape[0])
    variants = {"zo_plain": None, **{f"zo_subspace_tau{tau}": tau for tau in taus}}
    histories: dict[str, list[list[tuple[int, float]]]] = {}
    runs: dict[str, Any] = {}
    for name, tau in variants.items():
        histories[name], runs[name] = [], []
        for seed in range(ZO_SEEDS):
            subspace = None if tau is None else SubspaceGradient(tau=tau, nu=1e-3)
            theta, history = zo_minimise(
                loss,
                theta0,
                steps,
                ZOEstimator(n_directions=1, eps=ZO_EPS),
                ZOAdam(lr=lr),
                subspace,
                seed=seed,
            )
            histories[name].append(history)
            runs[name].append(
                {
                    "history": thin_history(history),
                    "test_accuracy": accuracy(theta),
                    "final_d_eff": None if subspace is None else subspace.d_eff,
                    "pca_fits": None if subspace is None else subspace.n_fits,
                }
            )
    theta = theta0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    history = [(0, loss(theta.detach()))]
    for step in range(steps):
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(logits(theta, zt), yt)
        value.backward()
        optimizer.step()
        history.append((step + 1, loss(theta.detach())))  # one forward (+ backward) per step
    runs["backprop"] = [
        {"history": thin_history(history), "test_accuracy": accuracy(theta.detach())}
    ]
    return {
        "task": f"{corruption} severity {DEVICE_SHIFT_SEVERITY}, {SHOTS} shots per class",
        "clip_split": ADAPTATION_CLIP_SPLIT[part],
        "lr": lr,
        "initial_loss": loss(theta0),
        "initial_test_accuracy": accuracy(theta0),
        "summary": {
            name: compare_runs(histories["zo_plain"], histories[name])
            for name in variants
            if name != "zo_plain"
        },
        "runs": runs,
    }


def compare_runs(plain_runs: list, subspace_runs: list) -> list[dict[str, Any]]:
    """Per seed: forward passes each variant needs to reach plain ZO's final loss (the claim)
    and 50 / 90 / 99 % of plain's loss decrease."""
    rows = []
    for seed, (plain, sub) in enumerate(zip(plain_runs, subspace_runs, strict=True)):
        start, target = plain[0][1], plain[-1][1]
        row = {
            "seed": seed,
            "plain_final_loss": target,
            "subspace_final_loss": sub[-1][1],
            "budget_passes": plain[-1][0],
            "plain_passes_to_plain_final": passes_to_reach(plain, target),
            "subspace_passes_to_plain_final": passes_to_reach(sub, target),
        }
        for fraction in (0.5, 0.9, 0.99):
            level = start - fraction * (start - target)
            row[f"plain_passes_to_{fraction}"] = passes_to_reach(plain, level)
            row[f"subspace_passes_to_{fraction}"] = passes_to_reach(sub, level)
        plain_n, sub_n = row["plain_passes_to_plain_final"], row["subspace_passes_to_plain_final"]
        row["subspace_fewer_passes"] = sub_n is not None and sub_n < plain_n
        rows.append(row)
    return rows


def _final_losses(task: dict[str, Any], variant: str) -> list[float]:
    return [run["history"][-1][1] for run in task["runs"][variant]]


def zo_section(float_path: Path, steps: int) -> dict[str, Any]:
    """Validation: plain ZO at each learning rate (lowest mean final loss wins), then every tau
    at that rate (most runs reaching plain's final loss in fewer passes wins; ties: lower mean
    final loss). Test: plain vs the chosen tau and backprop, once."""
    val_parts = ZO_TASKS["validation"]
    by_lr = {
        lr: {c: run_task(float_path, "validation", c, steps, lr, ()) for c in val_parts}
        for lr in ZO_LRS
    }
    lr_loss = {
        lr: float(np.mean([np.mean(_final_losses(t, "zo_plain")) for t in tasks.values()]))
        for lr, tasks in by_lr.items()
    }
    lr = min(ZO_LRS, key=lambda value: (lr_loss[value], ZO_LRS.index(value)))
    val_tasks = {c: run_task(float_path, "validation", c, steps, lr, ZO_TAUS) for c in val_parts}

    def tau_score(tau: int) -> tuple[int, float]:
        name = f"zo_subspace_tau{tau}"
        wins = sum(
            r["subspace_fewer_passes"] for t in val_tasks.values() for r in t["summary"][name]
        )
        loss = float(np.mean([np.mean(_final_losses(t, name)) for t in val_tasks.values()]))
        return -wins, loss

    tau = min(ZO_TAUS, key=lambda value: (*tau_score(value), ZO_TAUS.index(value)))
    test_tasks = {c: run_task(float_path, "test", c, steps, lr, (tau,)) for c in ZO_TASKS["test"]}
    rows = [row for task in test_tasks.values() for r in task["summary"].values() for row in r]
    return {
        "parameters": "prompt vector added to z (128) + fused-head bias (6)",
        "estimator": f"one-sided, 1 direction, eps {ZO_EPS}, ZO-Adam; subspace nu 1e-3",
        "steps": steps,
        "seeds": ZO_SEEDS,
        "validation": {
            "lr_mean_final_loss": {str(k): v for k, v in lr_loss.items()},
            "taus": list(ZO_TAUS),
            "tau_wins": {str(t): -tau_score(t)[0] for t in ZO_TAUS},
            "tau_mean_final_loss": {str(t): tau_score(t)[1] for t in ZO_TAUS},
            "tasks": val_tasks,
        },
        "chosen": {"lr": lr, "tau": tau},
        "claim_holds_runs": sum(r["subspace_fewer_passes"] for r in rows),
        "claim_runs": len(rows),
        "tasks": test_tasks,
    }
