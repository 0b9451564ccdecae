"""Measuring the runtime on the device: accuracy, side-by-side latency, peak memory.

``secdood-device bench`` calls :func:`measure_runtime` (float vs int8, and the cost of LeanTTA,
on clean ID test clips). The full benchmark suite — adaptation under shift with validated
settings, memory of fresh processes, zeroth-order studies — lives in ``bench/`` and uses the
helpers here, so that the numbers a device reports and the benchmark's are measured alike.
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from device_client.runtime import DEFAULT_ADAPT_LAYERS, load_model
from shared.data.clipset import ClipSet
from shared.data.digit_actions import load_split
from shared.data.tensors import flow_to_tensor, frames_to_tensor


def clip_subset(split: str, n: int, seed: int) -> ClipSet:
    """``n`` clips of a digit-actions split drawn without replacement (sorted, deterministic)."""
    clips = load_split(split)
    idx = np.sort(np.random.default_rng(seed).choice(len(clips), min(n, len(clips)), False))
    return clips.subset(idx)


def clip_tensors(clips: ClipSet) -> tuple[Tensor, Tensor, Tensor]:
    """Model inputs and labels of a clip set: rgb, flow, labels (long)."""
    return (
        frames_to_tensor(clips.frames),
        flow_to_tensor(clips.flow),
        torch.as_tensor(clips.labels, dtype=torch.long),
    )


@torch.inference_mode()
def correct_per_clip(
    model: nn.Module, rgb: Tensor, flow: Tensor, labels: Tensor, batch_size: int = 1
) -> np.ndarray:
    """Per-clip correctness (N,) bool of ``model`` run ``batch_size`` clips at a time."""
    right = []
    for s in range(0, len(rgb), batch_size):
        pred = model(rgb[s : s + batch_size], flow[s : s + batch_size]).argmax(1)
        right.append((pred == labels[s : s + batch_size]).numpy())
    return np.concatenate(right)


def error_rate(
    model: nn.Module, rgb: Tensor, flow: Tensor, labels: Tensor, batch_size: int = 1
) -> float:
    """Fraction of clips ``model`` gets wrong."""
    return 1.0 - float(correct_per_clip(model, rgb, flow, labels, batch_size).mean())


def side_by_side_ms(
    models: dict[str, nn.Module], rgb: Tensor, flow: Tensor, rounds: int
) -> dict[str, float]:
    """Median batch-1 latency (ms) per model over ``rounds`` x 32 calls, the models interleaved
    call by call (clip i on every model, then clip i + 1), so that load bursts on a shared
    machine hit all models alike; one untimed warm-up call per model first."""
    times: dict[str, list[float]] = {name: [] for name in models}
    n = min(len(rgb), 32)
    with torch.inference_mode():
        for model in models.values():
            model(rgb[:1], flow[:1])
        for _ in range(rounds):
            for i in range(n):
                for name, model in models.items():
                    start = time.perf_counter()
                    model(rgb[i : i + 1], flow[i : i + 1])
                    times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * statistics.median(t) for name, t in times.items()}


def peak_rss_kib() -> int:
    """This process's peak RSS in KiB. Linux: VmHWM of /proc/self/status, because ru_maxrss
    keeps the *parent's* peak across fork + exec (a child of a big benchmark would report the
    parent's memory); elsewhere ``resource.getrusage`` max RSS."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def int8_vs_float(float_path: Path, int8_path: Path, n_test: int) -> dict[str, Any]:
    """Clean ID test accuracy, batch-1 latency (side by side) and artifact size, float vs int8."""
    rgb, flow, labels = clip_tensors(clip_subset("test", n_test, 1))
    fp = load_model(float_path).model
    q = load_model(int8_path, int8=True)
    ms = side_by_side_ms({"float": fp, "int8": q.model}, rgb, flow, rounds=5)
    acc_f = 1.0 - error_rate(fp, rgb, flow, labels, 64)
    acc_q = 1.0 - error_rate(q.model, rgb, flow, labels, 64)
    size_f, size_q = float_path.stat().st_size, int8_path.stat().st_size
    return {
        "engine": q.model.engine,
        "test_clips": len(rgb),
        "accuracy_float": acc_f,
        "accuracy_int8": acc_q,
        "accuracy_diff_points": 100.0 * (acc_f - acc_q),
        "latency_ms_float": ms["float"],
        "latency_ms_int8": ms["int8"],
        "latency_ratio_int8_over_float": ms["int8"] / ms["float"],
        "artifact_bytes_float": size_f,
        "artifact_bytes_int8": size_q,
        "size_ratio_int8_over_float": size_q / size_f,
    }


def leantta_latency(
    float_path: Path,
    int8_path: Path,
    n_clips: int,
    adapt_layers: int = DEFAULT_ADAPT_LAYERS,
    tau: float = 0.9,
    lam: float = 0.9,
) -> dict[str, float]:
    """Batch-1 latency (ms) with and without LeanTTA, float and int8, side by side."""
    rgb, flow, _ = clip_tensors(clip_subset("test", n_clips, 2))
    models = {
        "float_none": load_model(float_path).model,
        "float_leantta": load_model(float_path, "leantta", adapt_layers, tau=tau, lam=lam).model,
        "int8_none": load_model(int8_path, int8=True).model,
        "int8_leantta": load_model(
            int8_path, "leantta", adapt_layers, int8=True, tau=tau, lam=lam
        ).model,
    }
    return side_by_side_ms(models, rgb, flow, rounds=3)


def measure_runtime(float_path: Path, int8_path: Path, quick: bool = False) -> dict[str, Any]:
    """What ``secdood-device bench`` reports: float vs int8 and LeanTTA's latency cost."""
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "quick": quick,
        "int8": int8_vs_float(float_path, int8_path, 120 if quick else 600),
    }
    latency = leantta_latency(float_path, int8_path, 16 if quick else 96)
    results["leantta_latency_ms"] = latency
    results["leantta_latency_ratio"] = {
        kind: latency[f"{kind}_leantta"] / latency[f"{kind}_none"] for kind in ("float", "int8")
    }
    return results


def format_runtime(results: dict[str, Any]) -> str:
    """A short plain-text summary of :func:`measure_runtime`'s results."""
    q, ratio = results["int8"], results["leantta_latency_ratio"]
    return "\n".join(
        [
            f"engine {q['engine']}, {q['test_clips']} clean ID test clips, batch 1",
            f"float: accuracy {q['accuracy_float']:.4f}, {q['latency_ms_float']:.2f} ms/clip, "
            f"{q['artifact_bytes_float']} bytes",
            f"int8:  accuracy {q['accuracy_int8']:.4f}, {q['latency_ms_int8']:.2f} ms/clip, "
            f"{q['artifact_bytes_int8']} bytes",
            f"LeanTTA latency ratio: float {ratio['float']:.2f}x, int8 {ratio['int8']:.2f}x",
        ]
    )
