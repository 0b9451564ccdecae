"""Evaluate a base model: ID accuracy, OOD detection (near-easy, near-hard, far), device shift.

The JSON report (``secdood-server eval --json``) has the shape::

    {"id_accuracy": float,
     "shift": {"clean": acc, "severity": {"1": acc, ..., "5": acc},
               "per_corruption": {name: {"1": acc, ..., "5": acc}}},
     "detectors": {name: {"near": {"auroc", "fpr95", "aupr_in", "aupr_out"},
                          "near_hard": {...}, "far": {...}}}}

``near`` is the original near-OOD split, called "near-easy" in reports (the key stays for
backward compatibility); ``near_hard`` holds motions built from the ID primitives. All numbers
are fractions in [0, 1]. ID is the positive class for the OOD metrics (see docs/ood.md).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from server.training.base import ProgressFn, no_progress
from shared.data.corruptions import CORRUPTIONS, corrupt_clipset
from shared.data.digit_actions import ClipSet, DigitActionsConfig, load_split
from shared.models.checkpoint import ModelBundle
from shared.ood.metrics import accuracy, ood_metrics
from shared.ood.registry import DETECTORS
from shared.pipeline import OODPipeline

SEVERITIES = (1, 2, 3, 4, 5)
#: OOD splits scored against the ID test split: report key -> data split.
OOD_SPLITS: dict[str, str] = {"near": "near", "near_hard": "near_hard", "far": "far"}
#: Report names of the OOD splits (the "near" key is the near-easy split).
OOD_SPLIT_TITLES: dict[str, str] = {"near": "near-easy", "near_hard": "near-hard", "far": "far"}


def data_config_of(bundle: ModelBundle) -> DigitActionsConfig:
    """The data configuration the model was trained with (its test splits belong to it)."""
    return DigitActionsConfig(**bundle.train_config.get("data", {}))


def stratified_subset(clips: ClipSet, n: int, seed: int = 0) -> ClipSet:
    """About ``n`` clips with every class equally represented (deterministic)."""
    if n >= len(clips):
        return clips
    rng = np.random.default_rng(seed)
    classes = np.unique(clips.labels)
    per_class = max(1, n // len(classes))
    idx = np.concatenate(
        [rng.permutation(np.flatnonzero(clips.labels == c))[:per_class] for c in classes]
    )
    return clips.subset(np.sort(idx))


def detector_scores(
    pipeline: OODPipeline, embedded: dict[str, torch.Tensor], detectors: list[str]
) -> dict[str, dict[str, np.ndarray]]:
    """``{detector: {split: ood scores}}`` for embeddings of each split."""
    return {
        name: {
            split: pipeline.score_features(z, detector=name).ood_score.numpy()
            for split, z in embedded.items()
        }
        for name in detectors
    }


def embed_splits(
    pipeline: OODPipeline,
    data_config: DigitActionsConfig,
    names: tuple[str, ...] = ("test", *OOD_SPLITS.values()),
) -> tuple[dict[str, ClipSet], dict[str, torch.Tensor]]:
    """Load each split and embed it with the pipeline's model."""
    splits = {name: load_split(name, data_config) for name in names}
    return splits, {name: pipeline.embed_clips(clips.frames) for name, clips in splits.items()}


def evaluate(
    bundle: ModelBundle,
    data_config: DigitActionsConfig | None = None,
    detectors: list[str] | None = None,
    shift_clips: int = 300,
    corruptions: tuple[str, ...] = CORRUPTIONS,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Run the full evaluation and return the JSON-ready report."""
    data_config = data_config or data_config_of(bundle)
    pipeline = OODPipeline(bundle)
    detectors = detectors or sorted(DETECTORS)
    started = time.perf_counter()

    progress(0.0, "embedding ID test, near-OOD (easy, hard) and far-OOD clips")
    splits, embedded = embed_splits(pipeline, data_config)
    logits = {name: pipeline.score_features(z).logits for name, z in embedded.items()}
    test_labels = torch.as_tensor(splits["test"].labels)
    report: dict[str, Any] = {"id_accuracy": accuracy(logits["test"], test_labels)}

    report["detectors"] = {
        name: {key: ood_metrics(scores["test"], scores[split]) for key, split in OOD_SPLITS.items()}
        for name, scores in detector_scores(pipeline, embedded, detectors).items()
    }

    progress(0.3, "evaluating the corruption suite")
    subset = stratified_subset(splits["test"], shift_clips)
    subset_labels = torch.as_tensor(subset.labels)

    def subset_accuracy(clips: ClipSet) -> float:
        z = pipeline.embed_clips(clips.frames)
        return accuracy(pipeline.score_features(z).logits, subset_labels)

    per_corruption: dict[str, dict[str, float]] = {}
    jobs = [(c, s) for c in corruptions for s in SEVERITIES]
    for i, (corruption, severity) in enumerate(tqdm(jobs, desc="corruption suite", unit="set")):
        shifted = corrupt_clipset(subset, corruption, severity, seed=data_config.seed + severity)
        per_corruption.setdefault(corruption, {})[str(severity)] = subset_accuracy(shifted)
        progress(0.3 + 0.7 * (i + 1) / len(jobs), f"{corruption} severity {severity}")
    report["shift"] = {
        "clean": subset_accuracy(subset),
        "severity": {
            str(s): float(np.mean([per_corruption[c][str(s)] for c in corruptions]))
            for s in SEVERITIES
        },
        "per_corruption": per_corruption,
    }
    report["eval_seconds"] = round(time.perf_counter() - started, 2)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The same report as readable tables."""
    lines = [f"ID accuracy (clean test): {report['id_accuracy']:.4f}", ""]
    lines.append("OOD detection (ID positive; higher AUROC / lower FPR95 is better)")
    keys = list(OOD_SPLITS)
    header = f"{'detector':<14}" + "".join(
        f"{OOD_SPLIT_TITLES[key] + ' ' + metric:>17}"
        for key in keys
        for metric in ("AUROC", "FPR95")
    )
    lines += [header, "-" * len(header)]
    for name, res in report["detectors"].items():
        lines.append(
            f"{name:<14}"
            + "".join(f"{res[key][metric]:>17.4f}" for key in keys for metric in ("auroc", "fpr95"))
        )
    shift = report["shift"]
    lines += ["", f"Device shift: accuracy on corrupted test clips (clean {shift['clean']:.4f})"]
    header = f"{'corruption':<18}" + "".join(f"{'sev ' + s:>8}" for s in map(str, SEVERITIES))
    lines += [header, "-" * len(header)]
    for name, by_severity in shift["per_corruption"].items():
        lines.append(f"{name:<18}" + "".join(f"{by_severity[str(s)]:>8.3f}" for s in SEVERITIES))
    lines.append(
        f"{'mean':<18}" + "".join(f"{shift['severity'][str(s)]:>8.3f}" for s in SEVERITIES)
    )
    return "\n".join(lines)
