"""Adaptation under camera shift with honest settings: choose on validation, test once.

Validation = the ``val`` split's clips under :data:`ADAPTATION_VALIDATION_CORRUPTIONS`; test =
the ``test`` split's clips under :data:`ADAPTATION_TEST_CORRUPTIONS` (no corruption type in
common, see ``shared/data/adaptation_shifts.py``), severity 5, each corruption a fresh stream
(episodic). Every tunable setting — LeanTTA's (k, tau, lambda), the online ZO stream's learning
rate, TENT's learning rate — is chosen by mean validation error; the sweeps are reported on
validation only, and the test corruptions are run once, with the chosen settings.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest
from torch import Tensor, nn

from device_client.bn_baselines import Tent, bn_adapt, no_adaptation
from device_client.measure import (
    clip_subset,
    clip_tensors,
    correct_per_clip,
    error_rate,
    leantta_latency,
)
from device_client.runtime import DEFAULT_ADAPT_LAYERS, OnlineZOAdapter, ZOStreamConfig, load_model
from shared.data.adaptation_shifts import (
    ADAPTATION_CLIP_SPLIT,
    ADAPTATION_TEST_CORRUPTIONS,
    ADAPTATION_VALIDATION_CORRUPTIONS,
)
from shared.data.corruptions import DEVICE_SHIFT_SEVERITY, corrupt_clipset

#: LeanTTA settings (first k conv BatchNorms per stream, tau, lambda) tried on validation; the
#: first is the runtime default. lam = 0 turns the divergence back-off off, tau = 0 uses the
#: raw sample statistics before blending (tau = lam = 0 is BN-adapt at batch size 1).
LEANTTA_GRID: tuple[tuple[int, float, float], ...] = (
    (DEFAULT_ADAPT_LAYERS, 0.9, 0.9),
    (1, 0.9, 0.9),
    (2, 0.9, 0.9),
    (3, 0.9, 0.5),
    (3, 0.9, 0.0),
    (3, 0.5, 0.9),
    (3, 0.5, 0.5),
    (3, 0.5, 0.0),
    (3, 0.0, 0.9),
    (3, 0.0, 0.5),
)
#: Online ZO entropy adaptation: learning rates tried on validation (first = runtime default).
ZO_LR_GRID: tuple[float, ...] = (ZOStreamConfig().lr, 1e-3, 2e-2)
#: TENT learning rates tried on validation (first = the TENT paper's Adam 1e-3).
TENT_LR_GRID: tuple[float, ...] = (1e-3, 1e-4, 1e-2)
TENT_BATCHES = (16, 64)
BN_ADAPT_BATCHES = (1, 16, 64)


def leantta_name(k: int, tau: float, lam: float) -> str:
    return f"k{k}_tau{tau}_lam{lam}"


def mcnemar(none: np.ndarray, adapted: np.ndarray) -> dict[str, Any]:
    """Clips the adaptation fixed / broke vs no adaptation and the exact McNemar (binomial)
    two-sided p-value on those discordant pairs."""
    fixed, broken = int((~none & adapted).sum()), int((none & ~adapted).sum())
    p = binomtest(fixed, fixed + broken).pvalue if fixed + broken else 1.0
    return {"fixed": fixed, "broken": broken, "mcnemar_p": float(p)}


def bn_adapt_conv(model: nn.Module) -> nn.Module:
    """Test-time BN on the conv BatchNorms; the projection BatchNorm1d sees one value per
    channel and clip (undefined at batch size 1), so it keeps its source statistics."""
    adapted = bn_adapt(model)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            parent, _, child = name.rpartition(".")
            setattr(adapted.get_submodule(parent), child, no_adaptation(module))
    return adapted


def tent_error(
    model: nn.Module, rgb: Tensor, flow: Tensor, labels: Tensor, batch_size: int, lr: float = 1e-3
) -> float:
    tent = Tent(model, lr=lr, steps=1)
    wrong = 0
    for s in range(0, len(rgb), batch_size):
        pred = tent(rgb[s : s + batch_size], flow[s : s + batch_size]).argmax(1)
        wrong += int((pred != labels[s : s + batch_size]).sum())
    return wrong / len(rgb)


def zo_stream_error(
    model_path: Path, rgb: Tensor, flow: Tensor, labels: Tensor, config: ZOStreamConfig | None
) -> float:
    """Online ZO entropy adaptation: predict each clip, then let the adapter observe it."""
    model = load_model(model_path, "zo", DEFAULT_ADAPT_LAYERS).model
    adapter = OnlineZOAdapter(model, config or ZOStreamConfig())
    wrong = 0
    for i in range(len(rgb)):
        with torch.inference_mode():
            pred = model(rgb[i : i + 1], flow[i : i + 1]).argmax(1)
        wrong += int(pred.item() != labels[i].item())
        adapter.observe(rgb[i : i + 1], flow[i : i + 1])
    return wrong / len(rgb)


def shifted_streams(part: str, n_per: int) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """``{corruption: (rgb, flow, labels)}`` of one part's clips under each of its corruptions."""
    corruptions = (
        ADAPTATION_VALIDATION_CORRUPTIONS if part == "validation" else ADAPTATION_TEST_CORRUPTIONS
    )
    base = clip_subset(ADAPTATION_CLIP_SPLIT[part], n_per, 2)
    return {c: clip_tensors(corrupt_clipset(base, c, DEVICE_SHIFT_SEVERITY)) for c in corruptions}


def _mean(per: dict[str, float]) -> float:
    return float(np.mean(list(per.values())))


def validation_sweeps(float_path: Path, n_per: int) -> dict[str, Any]:
    """Mean validation error of every candidate setting, and the chosen (lowest; ties: the
    earlier, i.e. the default) setting of LeanTTA, online ZO and TENT."""
    streams = shifted_streams("validation", n_per)
    leantta: dict[str, dict[str, float]] = {}
    for k, tau, lam in LEANTTA_GRID:
        model = load_model(float_path, "leantta", k, tau=tau, lam=lam).model
        # per-sample: batching cannot change LeanTTA's results, so evaluate 32 at a time
        leantta[leantta_name(k, tau, lam)] = {
            c: error_rate(model, *s, batch_size=32) for c, s in streams.items()
        }
    zo = {
        str(lr): {
            c: zo_stream_error(float_path, *s, replace(ZOStreamConfig(), lr=lr))
            for c, s in streams.items()
        }
        for lr in ZO_LR_GRID
    }
    float_model = load_model(float_path).model
    tent = {
        f"bs{bs}_lr{lr}": {c: tent_error(float_model, *s, bs, lr) for c, s in streams.items()}
        for bs in TENT_BATCHES
        for lr in TENT_LR_GRID
    }

    def pick(table: dict[str, dict[str, float]], keys: list[str]) -> str:
        return min(keys, key=lambda key: (_mean(table[key]), keys.index(key)))

    chosen_leantta = pick(leantta, list(leantta))
    k, tau, lam = next(g for g in LEANTTA_GRID if leantta_name(*g) == chosen_leantta)
    return {
        "corruptions": list(streams),
        "clip_split": ADAPTATION_CLIP_SPLIT["validation"],
        "clips_per_corruption": len(next(iter(streams.values()))[0]),
        "leantta_mean_error": {key: _mean(v) for key, v in leantta.items()},
        "zo_lr_mean_error": {key: _mean(v) for key, v in zo.items()},
        "tent_mean_error": {key: _mean(v) for key, v in tent.items()},
        "chosen": {
            "leantta": {"adapt_layers": k, "tau": tau, "lam": lam},
            "zo_lr": float(pick(zo, list(zo))),
            "tent_lr": {
                f"bs{bs}": float(
                    pick(tent, [f"bs{bs}_lr{lr}" for lr in TENT_LR_GRID]).split("_lr")[1]
                )
                for bs in TENT_BATCHES
            },
        },
    }


def run_test_shifts(
    float_path: Path, int8_path: Path, n_per: int, chosen: dict[str, Any]
) -> tuple[dict, dict]:
    """Every method on the held-out test corruptions, once, with the validated settings.

    Returns the ``leantta`` section (no adaptation vs LeanTTA, float and int8, batch 1, paired
    McNemar test, gap to BN-adapt at batch 64) and the ``baselines`` section."""
    lt = chosen["leantta"]
    k, tau, lam = lt["adapt_layers"], lt["tau"], lt["lam"]
    models = {
        "float_none": load_model(float_path).model,
        "float_leantta": load_model(float_path, "leantta", k, tau=tau, lam=lam).model,
        "int8_none": load_model(int8_path, int8=True).model,
        "int8_leantta": load_model(int8_path, "leantta", k, int8=True, tau=tau, lam=lam).model,
    }
    float_model = models["float_none"]
    streams = shifted_streams("test", n_per)
    per: dict[str, dict[str, float]] = {}
    correct: dict[str, list[np.ndarray]] = {name: [] for name in models}
    for corruption, (rgb, flow, labels) in streams.items():
        row = {}
        for name, model in models.items():
            correct[name].append(correct_per_clip(model, rgb, flow, labels, 1))
            row[name] = 1.0 - float(correct[name][-1].mean())
        for bs in BN_ADAPT_BATCHES:
            row[f"bn_adapt_bs{bs}"] = error_rate(bn_adapt_conv(float_model), rgb, flow, labels, bs)
        for bs in TENT_BATCHES:
            lr = chosen["tent_lr"][f"bs{bs}"]
            row[f"tent_bs{bs}"] = tent_error(float_model, rgb, flow, labels, bs, lr)
        zo_config = replace(ZOStreamConfig(), lr=chosen["zo_lr"])
        row["zo_entropy"] = zo_stream_error(float_path, rgb, flow, labels, zo_config)
        per[corruption] = row
    methods = list(next(iter(per.values())))
    mean = {m: float(np.mean([per[c][m] for c in per])) for m in methods}
    latency = leantta_latency(float_path, int8_path, n_per, k, tau, lam)
    leantta = {
        "severity": DEVICE_SHIFT_SEVERITY,
        "corruptions": list(streams),
        "clip_split": ADAPTATION_CLIP_SPLIT["test"],
        "clips_per_corruption": n_per,
        "settings": lt,
        "mean_error": {m: mean[m] for m in models},
        "paired_vs_none": {
            kind: mcnemar(
                np.concatenate(correct[f"{kind}_none"]), np.concatenate(correct[f"{kind}_leantta"])
            )
            for kind in ("float", "int8")
        },
        "gap_to_bn_adapt_bs64_points": 100.0 * (mean["float_leantta"] - mean["bn_adapt_bs64"]),
        "per_corruption": {c: {m: per[c][m] for m in models} for c in per},
        "latency_ms": latency,
        "latency_ratio_float": latency["float_leantta"] / latency["float_none"],
        "latency_ratio_int8": latency["int8_leantta"] / latency["int8_none"],
    }
    others = [m for m in methods if m not in models]
    baselines = {
        "settings": {"zo_lr": chosen["zo_lr"], "tent_lr": chosen["tent_lr"]},
        "mean_error": {m: mean[m] for m in ["float_none", *others]},
        "per_corruption": {c: {m: per[c][m] for m in others} for c in per},
    }
    return leantta, baselines
