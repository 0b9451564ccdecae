"""Device benchmarks, run on the device itself (``secdood-device bench``, ``bench/device.py``).

Sections of the result dict (and JSON): ``int8`` (clean ID accuracy, latency, artifact size,
float vs int8 side by side), ``leantta`` (error over the corruption suite at severity 5, batch
size 1, float and int8, and LeanTTA's latency ratio), ``baselines`` (BN-adapt at batch sizes
1/16/64, TENT, online ZO entropy adaptation, on the same stream), ``memory`` (max RSS of a fresh
subprocess doing only one job) and ``zo`` (few-shot personalisation: plain ZO vs subspace ZO vs
backprop, loss against forward passes). Speed numbers are medians measured side by side.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from device_client.bn_baselines import Tent, bn_adapt, no_adaptation
from device_client.runtime import DEFAULT_ADAPT_LAYERS, OnlineZOAdapter, ZOStreamConfig, load_model
from device_client.subspace import SubspaceGradient
from device_client.zo import ZOAdam, ZOEstimator, zo_minimise
from shared.data.corruptions import CORRUPTIONS, DEVICE_SHIFT_SEVERITY, corrupt_clipset
from shared.data.digit_actions import load_split
from shared.data.tensors import flow_to_tensor, frames_to_tensor

MEMORY_JOBS = ("inference", "leantta", "zo", "tent", "inference_int8", "leantta_int8")


def _subset(split: str, n: int, seed: int):
    clips = load_split(split)
    idx = np.sort(np.random.default_rng(seed).choice(len(clips), min(n, len(clips)), False))
    return clips.subset(idx)


def _tensors(clips) -> tuple[Tensor, Tensor, Tensor]:
    return (
        frames_to_tensor(clips.frames),
        flow_to_tensor(clips.flow),
        torch.as_tensor(clips.labels, dtype=torch.long),
    )


@torch.inference_mode()
def _error(model, rgb: Tensor, flow: Tensor, labels: Tensor, batch_size: int = 1) -> float:
    wrong = 0
    for s in range(0, len(rgb), batch_size):
        pred = model(rgb[s : s + batch_size], flow[s : s + batch_size]).argmax(1)
        wrong += int((pred != labels[s : s + batch_size]).sum())
    return wrong / len(rgb)


def _bn_adapt_conv(model):
    """Test-time BN on the conv BatchNorms; the projection BatchNorm1d sees one value per
    channel and clip (undefined at batch size 1), so it keeps its source statistics."""
    adapted = bn_adapt(model)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            parent, _, child = name.rpartition(".")
            setattr(adapted.get_submodule(parent), child, no_adaptation(module))
    return adapted


def _tent_error(model, rgb, flow, labels, batch_size: int) -> float:
    tent = Tent(model, lr=1e-3, steps=1)
    wrong = 0
    for s in range(0, len(rgb), batch_size):
        pred = tent(rgb[s : s + batch_size], flow[s : s + batch_size]).argmax(1)
        wrong += int((pred != labels[s : s + batch_size]).sum())
    return wrong / len(rgb)


def _zo_stream_error(model_path, rgb, flow, labels) -> float:
    model = load_model(model_path, "zo", DEFAULT_ADAPT_LAYERS).model
    adapter = OnlineZOAdapter(model, ZOStreamConfig())
    wrong = 0
    for i in range(len(rgb)):
        with torch.inference_mode():
            pred = model(rgb[i : i + 1], flow[i : i + 1]).argmax(1)
        wrong += int(pred.item() != labels[i].item())
        adapter.observe(rgb[i : i + 1], flow[i : i + 1])
    return wrong / len(rgb)


def _median_ms(fn, rgb: Tensor, flow: Tensor, n: int) -> float:
    times = []
    with torch.inference_mode():
        for i in range(n):
            start = time.perf_counter()
            fn(rgb[i : i + 1], flow[i : i + 1])
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def _side_by_side_ms(models: dict[str, Any], rgb: Tensor, flow: Tensor, rounds: int) -> dict:
    """Median batch-1 latency (ms) per model, the models interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in models}
    n = min(len(rgb), 32)
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(_median_ms(model, rgb, flow, n))
    return {name: statistics.median(t) for name, t in times.items()}


def int8_section(float_path: Path, int8_path: Path, n_test: int) -> dict[str, Any]:
    rgb, flow, labels = _tensors(_subset("test", n_test, 1))
    fp = load_model(float_path).model
    q = load_model(int8_path, int8=True)
    ms = _side_by_side_ms({"float": fp, "int8": q.model}, rgb, flow, rounds=5)
    acc_f = 1.0 - _error(fp, rgb, flow, labels, 64)
    acc_q = 1.0 - _error(q.model, rgb, flow, labels, 64)
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


def shift_sections(float_path: Path, int8_path: Path, n_per: int) -> tuple[dict, dict]:
    """Per corruption at severity 5: error of every method at batch size 1 (batch methods at
    their batch sizes), each corruption a fresh stream (episodic)."""
    base = _subset("test", n_per, 2)
    models = {
        "float_none": load_model(float_path).model,
        "float_leantta": load_model(float_path, "leantta").model,
        "int8_none": load_model(int8_path, int8=True).model,
        "int8_leantta": load_model(int8_path, "leantta", int8=True).model,
    }
    float_model = models["float_none"]
    per: dict[str, dict[str, float]] = {}
    for corruption in CORRUPTIONS:
        rgb, flow, labels = _tensors(corrupt_clipset(base, corruption, DEVICE_SHIFT_SEVERITY))
        row = {name: _error(m, rgb, flow, labels, 1) for name, m in models.items()}
        for bs in (1, 16, 64):
            row[f"bn_adapt_bs{bs}"] = _error(_bn_adapt_conv(float_model), rgb, flow, labels, bs)
        for bs in (16, 64):
            row[f"tent_bs{bs}"] = _tent_error(float_model, rgb, flow, labels, bs)
        row["zo_entropy"] = _zo_stream_error(float_path, rgb, flow, labels)
        per[corruption] = row
    methods = list(next(iter(per.values())))
    mean = {m: float(np.mean([per[c][m] for c in per])) for m in methods}
    rgb, flow, _ = _tensors(base)
    lat = _side_by_side_ms(
        {k: models[k] for k in ("float_none", "float_leantta", "int8_none", "int8_leantta")},
        rgb,
        flow,
        rounds=3,
    )
    leantta = {
        "severity": DEVICE_SHIFT_SEVERITY,
        "clips_per_corruption": len(base),
        "adapt_layers_per_stream": DEFAULT_ADAPT_LAYERS,
        "mean_error": {k: mean[k] for k in models},
        "per_corruption": {c: {k: per[c][k] for k in models} for c in per},
        "latency_ms": lat,
        "latency_ratio_float": lat["float_leantta"] / lat["float_none"],
        "latency_ratio_int8": lat["int8_leantta"] / lat["int8_none"],
    }
    others = [m for m in methods if m not in models]
    baselines = {
        "mean_error": {k: mean[k] for k in ["float_none", *others]},
        "per_corruption": {c: {k: per[c][k] for k in others} for c in per},
    }
    return leantta, baselines


def memory_job(job: str, float_path: Path, int8_path: Path, inputs_path: Path) -> int:
    """Run one job in this process on saved inputs and return its max RSS in KiB (Linux)."""
    torch.set_num_threads(1)
    saved = torch.load(inputs_path, weights_only=True)
    rgb, flow, labels = saved["rgb"], saved["flow"], saved["labels"]
    if job in ("inference", "leantta", "inference_int8", "leantta_int8"):
        path = int8_path if job.endswith("int8") else float_path
        model = load_model(path, "leantta" if job.startswith("leantta") else "none").model
        _error(model, rgb, flow, labels, 1)
    elif job == "zo":
        _zo_stream_error(float_path, rgb, flow, labels)
    elif job == "tent":
        _tent_error(no_adaptation(load_model(float_path).model), rgb, flow, labels, 16)
    else:
        raise ValueError(f"unknown memory job {job!r}; choose one of {MEMORY_JOBS}")
    return peak_rss_kib()


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


def memory_section(float_path: Path, int8_path: Path, n_clips: int) -> dict[str, Any]:
    """Each job in a fresh interpreter on the same saved clips (no dataset loading inside, so the
    peak is the job's own)."""
    rgb, flow, labels = _tensors(_subset("test", n_clips, 3))
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.pt"
        torch.save({"rgb": rgb, "flow": flow, "labels": labels}, inputs)
        for job in MEMORY_JOBS:
            command = [sys.executable, "-m", "device_client.benchmark", job]
            command += [str(float_path), str(int8_path), str(inputs)]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            peaks[job] = int(out.stdout.strip().splitlines()[-1]) / 1024.0  # MiB
    ratio = {job: peaks[job] / peaks["inference"] for job in ("leantta", "zo", "tent")}
    ratio["leantta_int8"] = peaks["leantta_int8"] / peaks["inference_int8"]
    return {"max_rss_mib": peaks, "ratio_to_inference": ratio, "clips": n_clips, "tent_batch": 16}


def _few_shot(float_path: Path, shots: int, corruption: str):
    """Embeddings of a corrupted domain: ``shots`` labelled clips per class + a held-out set."""
    clips = corrupt_clipset(_subset("test", 400, 4), corruption, DEVICE_SHIFT_SEVERITY)
    model = load_model(float_path).model
    rgb, flow, labels = _tensors(clips)
    with torch.inference_mode():
        z = model.embed(rgb, flow)
    head = model.fused_head
    train_idx = np.concatenate(
        [np.flatnonzero(clips.labels == c)[:shots] for c in np.unique(clips.labels)]
    )
    test_mask = np.ones(len(clips), bool)
    test_mask[train_idx] = False
    return z, labels, train_idx, test_mask, head.weight.detach(), head.bias.detach()


def zo_section(float_path: Path, steps: int, corruption: str = "brightness") -> dict[str, Any]:
    """Few-shot personalisation of a prompt vector added to z plus the fused head's bias."""
    z, labels, train_idx, test_mask, weight, bias = _few_shot(float_path, 5, corruption)
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
    runs: dict[str, Any] = {}
    for name, use_subspace in (("zo_plain", False), ("zo_subspace", True)):
        curves = []
        for seed in range(3):
            theta, history = zo_minimise(
                loss,
                theta0,
                steps,
                ZOEstimator(n_directions=1, eps=1e-3),
                ZOAdam(lr=1e-2),
                SubspaceGradient(tau=128, nu=1e-3) if use_subspace else None,
                seed=seed,
            )
            curves.append({"history": history, "test_accuracy": accuracy(theta)})
        runs[name] = curves
    theta = theta0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=1e-2)
    history = [(0, loss(theta.detach()))]
    for step in range(steps):
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(logits(theta, zt), yt)
        value.backward()
        optimizer.step()
        history.append((step + 1, loss(theta.detach())))  # one forward (+ backward) per step
    runs["backprop"] = [{"history": history, "test_accuracy": accuracy(theta.detach())}]

    def passes_to_reach(history, target: float) -> int | None:
        return next((p for p, value in history if value <= target), None)

    def halfway(history) -> int | None:  # drift phase: half of the achievable loss decrease
        start, end = history[0][1], runs["zo_plain"][seed]["history"][-1][1]
        return passes_to_reach(history, start - 0.5 * (start - end))

    summary = {}
    for seed in range(3):
        target = runs["zo_plain"][seed]["history"][-1][1]
        summary[f"seed{seed}"] = {
            "plain_final_loss": target,
            "subspace_final_loss": runs["zo_subspace"][seed]["history"][-1][1],
            "plain_passes": runs["zo_plain"][seed]["history"][-1][0],
            "subspace_passes_to_plain_final": passes_to_reach(
                runs["zo_subspace"][seed]["history"], target
            ),
            "plain_passes_to_halfway": halfway(runs["zo_plain"][seed]["history"]),
            "subspace_passes_to_halfway": halfway(runs["zo_subspace"][seed]["history"]),
        }
    return {
        "task": f"{corruption} severity {DEVICE_SHIFT_SEVERITY}, 5 shots per class",
        "parameters": "prompt vector added to z (128) + fused-head bias (6)",
        "initial_loss": loss(theta0),
        "initial_test_accuracy": accuracy(theta0),
        "steps": steps,
        "summary": summary,
        "runs": runs,
    }


def run_device_benchmark(
    float_path: Path, int8_path: Path, out: Path, quick: bool = False
) -> dict[str, Any]:
    """Run every section, write ``out`` (JSON) and return the results."""
    torch.set_num_threads(1)
    started = time.time()
    results: dict[str, Any] = {"quick": quick, "machine": _machine()}
    print("int8 vs float ...", file=sys.stderr)
    results["int8"] = int8_section(float_path, int8_path, 120 if quick else 600)
    print("corruption suite ...", file=sys.stderr)
    results["leantta"], results["baselines"] = shift_sections(
        float_path, int8_path, 16 if quick else 96
    )
    print("memory ...", file=sys.stderr)
    results["memory"] = memory_section(float_path, int8_path, 16 if quick else 48)
    print("zeroth order ...", file=sys.stderr)
    results["zo"] = zo_section(float_path, 300 if quick else 1500)
    results["seconds"] = time.time() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(markdown_tables(results))
    return results


def _machine() -> dict[str, Any]:
    import platform

    return {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def markdown_tables(results: dict[str, Any]) -> str:
    """The benchmark tables in markdown (what BENCHMARKS.md records)."""
    q = results["int8"]
    lines = [
        f"int8 vs float ({q['engine']} engine, batch 1, {q['test_clips']} clean ID test clips)",
        "",
        "| model | accuracy | latency ms/clip | artifact bytes |",
        "|---|---|---|---|",
        f"| float | {q['accuracy_float']:.4f} | {q['latency_ms_float']:.2f} | "
        f"{q['artifact_bytes_float']} |",
        f"| int8 | {q['accuracy_int8']:.4f} | {q['latency_ms_int8']:.2f} | "
        f"{q['artifact_bytes_int8']} |",
        f"| int8/float | {-q['accuracy_diff_points']:+.2f} pt | "
        f"{q['latency_ratio_int8_over_float']:.2f}x | {q['size_ratio_int8_over_float']:.3f}x |",
        "",
    ]
    lt, bl = results["leantta"], results["baselines"]
    lines += [
        f"Mean error over {len(lt['per_corruption'])} corruptions, severity {lt['severity']}, "
        f"{lt['clips_per_corruption']} clips each",
        "",
        "| method | mean error |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in {**lt["mean_error"], **bl["mean_error"]}.items()]
    lines += [
        "",
        f"LeanTTA latency ratio: float {lt['latency_ratio_float']:.2f}x, "
        f"int8 {lt['latency_ratio_int8']:.2f}x",
        "",
        "| job | max RSS MiB | ratio to inference |",
        "|---|---|---|",
    ]
    mem = results["memory"]
    for job, mib in mem["max_rss_mib"].items():
        ratio = mem["ratio_to_inference"].get(job)
        lines.append(f"| {job} | {mib:.1f} | {'' if ratio is None else f'{ratio:.3f}'} |")
    zo = results["zo"]
    lines += ["", f"ZO few-shot ({zo['task']}; {zo['parameters']})", ""]
    lines += [
        "| seed | plain final loss | subspace final loss | subspace passes to plain's final | "
        "passes to halfway plain / subspace |"
    ]
    lines += ["|---|---|---|---|---|"]
    for seed, row in zo["summary"].items():
        lines.append(
            f"| {seed} | {row['plain_final_loss']:.4f} | {row['subspace_final_loss']:.4f} | "
            f"{row['subspace_passes_to_plain_final']} of {row['plain_passes']} | "
            f"{row['plain_passes_to_halfway']} / {row['subspace_passes_to_halfway']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # memory job in a fresh process: JOB FLOAT INT8 INPUTS
    print(memory_job(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
