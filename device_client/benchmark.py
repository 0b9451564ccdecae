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
from scipy.stats import binomtest
from torch import Tensor

from device_client.bn_baselines import Tent, bn_adapt, no_adaptation
from device_client.runtime import DEFAULT_ADAPT_LAYERS, OnlineZOAdapter, ZOStreamConfig, load_model
from device_client.subspace import SubspaceGradient
from device_client.zo import ZOAdam, ZOEstimator, zo_minimise
from shared.data.corruptions import CORRUPTIONS, DEVICE_SHIFT_SEVERITY, corrupt_clipset
from shared.data.digit_actions import load_split
from shared.data.tensors import flow_to_tensor, frames_to_tensor

MEMORY_JOBS = ("inference", "leantta", "zo", "tent", "inference_int8", "leantta_int8")
#: (window, eval_batch) of the online ZO entropy adaptation measured besides the default.
ZO_MEMORY_SWEEP = ((16, 16), (16, 8), (16, 4), (16, 2), (16, 1), (8, 8), (8, 4))


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
def _correct(model, rgb: Tensor, flow: Tensor, labels: Tensor, batch_size: int = 1) -> np.ndarray:
    """Per-clip correctness (N,) bool of ``model`` run ``batch_size`` clips at a time."""
    right = []
    for s in range(0, len(rgb), batch_size):
        pred = model(rgb[s : s + batch_size], flow[s : s + batch_size]).argmax(1)
        right.append((pred == labels[s : s + batch_size]).numpy())
    return np.concatenate(right)


def _error(model, rgb: Tensor, flow: Tensor, labels: Tensor, batch_size: int = 1) -> float:
    return 1.0 - float(_correct(model, rgb, flow, labels, batch_size).mean())


def _paired(none: np.ndarray, adapted: np.ndarray) -> dict[str, Any]:
    """Clips LeanTTA fixed / broke vs no adaptation and the exact McNemar (binomial) p-value."""
    fixed, broken = int((~none & adapted).sum()), int((none & ~adapted).sum())
    p = binomtest(fixed, fixed + broken).pvalue if fixed + broken else 1.0
    return {"fixed": fixed, "broken": broken, "mcnemar_p": float(p)}


#: LeanTTA settings besides the default (k = 3, tau = lam = 0.9) measured on the float model.
#: The algorithm is unchanged; lam = 0 turns the divergence back-off off, tau = 0 uses the raw
#: sample statistics before blending (tau = lam = 0 is BN-adapt at batch size 1).
LEANTTA_SWEEP = (
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


def _zo_stream_error(model_path, rgb, flow, labels, config: ZOStreamConfig | None = None) -> float:
    model = load_model(model_path, "zo", DEFAULT_ADAPT_LAYERS).model
    adapter = OnlineZOAdapter(model, config or ZOStreamConfig())
    wrong = 0
    for i in range(len(rgb)):
        with torch.inference_mode():
            pred = model(rgb[i : i + 1], flow[i : i + 1]).argmax(1)
        wrong += int(pred.item() != labels[i].item())
        adapter.observe(rgb[i : i + 1], flow[i : i + 1])
    return wrong / len(rgb)


def _side_by_side_ms(models: dict[str, Any], rgb: Tensor, flow: Tensor, rounds: int) -> dict:
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
    sweep_models = {
        f"k{k}_tau{tau}_lam{lam}": load_model(float_path, "leantta", k, tau=tau, lam=lam).model
        for k, tau, lam in LEANTTA_SWEEP
    }
    float_model = models["float_none"]
    per: dict[str, dict[str, float]] = {}
    correct: dict[str, list[np.ndarray]] = {name: [] for name in models}
    sweep: dict[str, list[float]] = {name: [] for name in sweep_models}
    for corruption in CORRUPTIONS:
        rgb, flow, labels = _tensors(corrupt_clipset(base, corruption, DEVICE_SHIFT_SEVERITY))
        row = {}
        with torch.inference_mode():
            for name, m in models.items():
                correct[name].append(_correct(m, rgb, flow, labels, 1))
                row[name] = 1.0 - float(correct[name][-1].mean())
            for name, m in sweep_models.items():  # per-sample: batching cannot change results
                sweep[name].append(1.0 - float(_correct(m, rgb, flow, labels, 32).mean()))
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
        "paired_vs_none": {
            kind: _paired(
                np.concatenate(correct[f"{kind}_none"]),
                np.concatenate(correct[f"{kind}_leantta"]),
            )
            for kind in ("float", "int8")
        },
        "per_corruption": {c: {k: per[c][k] for k in models} for c in per},
        "sweep_float_mean_error": {name: float(np.mean(v)) for name, v in sweep.items()},
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


def zo_job_name(window: int, eval_batch: int) -> str:
    """Memory job name of online ZO with ``window`` clips evaluated ``eval_batch`` at a time."""
    return f"zo_w{window}_b{eval_batch}"


def _parse_zo_job(job: str) -> ZOStreamConfig | None:
    """``zo_w{window}_b{eval_batch}`` -> its config (other settings default); None otherwise."""
    parts = job.split("_")
    if len(parts) != 3 or parts[0] != "zo" or parts[1][:1] != "w" or parts[2][:1] != "b":
        return None
    if not (parts[1][1:].isdigit() and parts[2][1:].isdigit()):
        return None
    return ZOStreamConfig(window=int(parts[1][1:]), eval_batch=int(parts[2][1:]))


def memory_job(job: str, float_path: Path, int8_path: Path, inputs_path: Path) -> int:
    """Run one job in this process on saved inputs and return its max RSS in KiB (Linux).

    Jobs: :data:`MEMORY_JOBS` and ``zo_w{window}_b{eval_batch}`` (online ZO with that window
    and loss-evaluation batch; ``"zo"`` is the default :class:`ZOStreamConfig`).
    """
    torch.set_num_threads(1)
    zo_config = _parse_zo_job(job)
    if job not in MEMORY_JOBS and zo_config is None:
        raise ValueError(
            f"unknown memory job {job!r}; choose one of {MEMORY_JOBS} or zo_w<window>_b<batch>"
        )
    saved = torch.load(inputs_path, weights_only=True)
    rgb, flow, labels = saved["rgb"], saved["flow"], saved["labels"]
    if job in ("inference", "leantta", "inference_int8", "leantta_int8"):
        path = int8_path if job.endswith("int8") else float_path
        model = load_model(path, "leantta" if job.startswith("leantta") else "none").model
        _error(model, rgb, flow, labels, 1)
    elif job == "zo" or zo_config is not None:
        _zo_stream_error(float_path, rgb, flow, labels, zo_config)
    elif job == "tent":
        _tent_error(no_adaptation(load_model(float_path).model), rgb, flow, labels, 16)
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


def memory_section(
    float_path: Path, int8_path: Path, n_clips: int, repeats: int = 1
) -> dict[str, Any]:
    """Each job in a fresh interpreter on the same saved clips (no dataset loading inside, so the
    peak is the job's own); the jobs run round-robin ``repeats`` times and the median peak is
    kept. Also sweeps the online ZO window / loss-evaluation batch (:data:`ZO_MEMORY_SWEEP`)."""
    rgb, flow, labels = _tensors(_subset("test", n_clips, 3))
    jobs = [*MEMORY_JOBS, *(zo_job_name(w, b) for w, b in ZO_MEMORY_SWEEP)]
    samples: dict[str, list[float]] = {job: [] for job in jobs}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.pt"
        torch.save({"rgb": rgb, "flow": flow, "labels": labels}, inputs)
        for _ in range(repeats):
            for job in jobs:
                command = [sys.executable, "-m", "device_client.benchmark", job]
                command += [str(float_path), str(int8_path), str(inputs)]
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                samples[job].append(int(out.stdout.strip().splitlines()[-1]) / 1024.0)  # MiB
    peaks = {job: statistics.median(values) for job, values in samples.items()}
    ratio = {
        job: peaks[job] / peaks["inference"]
        for job in jobs
        if job not in ("inference", "inference_int8", "leantta_int8")
    }
    ratio["leantta_int8"] = peaks["leantta_int8"] / peaks["inference_int8"]
    default = ZOStreamConfig()
    return {
        "max_rss_mib": peaks,
        "ratio_to_inference": ratio,
        "clips": n_clips,
        "repeats": repeats,
        "tent_batch": 16,
        "zo_default": {"window": default.window, "eval_batch": default.eval_batch},
    }


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


#: few-shot shifts: brightness (the original task) and two the model suffers from at severity 5
ZO_CORRUPTIONS = ("brightness", "contrast", "shot_noise")
#: subspace ring-buffer lengths compared with plain ZO (128 = DESIGN default; smaller = early fits)
ZO_TAUS = (128, 32, 16)
ZO_SEEDS = 3
_HISTORY_POINTS = 300  # points per curve kept in the JSON / plot (summaries use the full curve)


def _passes_to_reach(history: list[tuple[int, float]], target: float) -> int | None:
    """First forward-pass count at which the loss is <= ``target`` (None: never)."""
    return next((p for p, value in history if value <= target), None)


def _thin(history: list[tuple[int, float]]) -> list[tuple[int, float]]:
    stride = max(1, -(-len(history) // _HISTORY_POINTS))  # ceil: at most _HISTORY_POINTS (+1)
    return history[::stride] + ([history[-1]] if (len(history) - 1) % stride else [])


def _few_shot_task(float_path: Path, corruption: str, steps: int, taus) -> dict[str, Any]:
    """Plain ZO, subspace ZO (one run per tau) and backprop on one corrupted few-shot task."""
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
                ZOEstimator(n_directions=1, eps=1e-3),
                ZOAdam(lr=1e-2),
                subspace,
                seed=seed,
            )
            histories[name].append(history)
            runs[name].append(
                {
                    "history": _thin(history),
                    "test_accuracy": accuracy(theta),
                    "final_d_eff": None if subspace is None else subspace.d_eff,
                    "pca_fits": None if subspace is None else subspace.n_fits,
                }
            )
    theta = theta0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=1e-2)
    history = [(0, loss(theta.detach()))]
    for step in range(steps):
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(logits(theta, zt), yt)
        value.backward()
        optimizer.step()
        history.append((step + 1, loss(theta.detach())))  # one forward (+ backward) per step
    runs["backprop"] = [{"history": _thin(history), "test_accuracy": accuracy(theta.detach())}]

    summary: dict[str, Any] = {}
    for name in variants:
        if name == "zo_plain":
            continue
        rows = []
        for seed in range(ZO_SEEDS):
            plain, sub = histories["zo_plain"][seed], histories[name][seed]
            start, target = plain[0][1], plain[-1][1]
            row = {
                "seed": seed,
                "plain_final_loss": target,
                "subspace_final_loss": sub[-1][1],
                "budget_passes": plain[-1][0],
                # the claim: forward passes to reach plain ZO's final loss (same seed)
                "plain_passes_to_plain_final": _passes_to_reach(plain, target),
                "subspace_passes_to_plain_final": _passes_to_reach(sub, target),
            }
            for fraction in (0.5, 0.9, 0.99):  # of plain's achieved loss decrease
                level = start - fraction * (start - target)
                row[f"plain_passes_to_{fraction}"] = _passes_to_reach(plain, level)
                row[f"subspace_passes_to_{fraction}"] = _passes_to_reach(sub, level)
            plain_n, sub_n = (
                row["plain_passes_to_plain_final"],
                row["subspace_passes_to_plain_final"],
            )
            row["subspace_fewer_passes"] = sub_n is not None and sub_n < plain_n
            rows.append(row)
        summary[name] = rows
    return {
        "task": f"{corruption} severity {DEVICE_SHIFT_SEVERITY}, 5 shots per class",
        "initial_loss": loss(theta0),
        "initial_test_accuracy": accuracy(theta0),
        "summary": summary,
        "runs": runs,
    }


def zo_section(
    float_path: Path,
    steps: int,
    corruptions: tuple[str, ...] = ZO_CORRUPTIONS,
    taus: tuple[int, ...] = ZO_TAUS,
) -> dict[str, Any]:
    """Few-shot personalisation of a prompt vector added to z plus the fused head's bias, per
    corrupted domain: plain ZO vs subspace ZO (each tau) vs backprop, ``ZO_SEEDS`` seeds."""
    tasks = {c: _few_shot_task(float_path, c, steps, taus) for c in corruptions}
    rows = [row for task in tasks.values() for r in task["summary"].values() for row in r]
    return {
        "parameters": "prompt vector added to z (128) + fused-head bias (6)",
        "estimator": "one-sided, 1 direction, eps 1e-3, ZO-Adam lr 1e-2; subspace nu 1e-3",
        "steps": steps,
        "seeds": ZO_SEEDS,
        "taus": list(taus),
        "claim_holds_runs": sum(r["subspace_fewer_passes"] for r in rows),
        "claim_runs": len(rows),
        "tasks": tasks,
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
    results["memory"] = memory_section(
        float_path, int8_path, 16 if quick else 48, 1 if quick else 3
    )
    print("zeroth order ...", file=sys.stderr)
    results["zo"] = zo_section(float_path, 300 if quick else 3000)
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


def _fmt_passes(value: int | None) -> str:
    return "never" if value is None else str(value)


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
        f"{lt['clips_per_corruption']} clips each (batch 1 unless the name says otherwise; "
        f"LeanTTA adapts the first {lt['adapt_layers_per_stream']} conv BatchNorms of each stream)",
        "",
        "| method | mean error |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in {**lt["mean_error"], **bl["mean_error"]}.items()]
    methods = list(lt["mean_error"])
    lines += ["", "Per corruption (batch 1)", ""]
    lines += ["| corruption | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for corruption, row in lt["per_corruption"].items():
        lines.append(f"| {corruption} | " + " | ".join(f"{row[m]:.4f}" for m in methods) + " |")
    for kind, pair in lt.get("paired_vs_none", {}).items():
        lines.append(
            f"\n{kind}: LeanTTA fixed {pair['fixed']} clips and broke {pair['broken']} "
            f"(exact McNemar p = {pair['mcnemar_p']:.2g})."
        )
    if "sweep_float_mean_error" in lt:
        lines += ["", "LeanTTA settings sweep (float, same clips)", ""]
        lines += ["| first k per stream, tau, lambda | mean error |", "|---|---|"]
        lines.append(
            f"| {lt['adapt_layers_per_stream']}, 0.9, 0.9 (default) | "
            f"{lt['mean_error']['float_leantta']:.4f} |"
        )
        for name, value in lt["sweep_float_mean_error"].items():
            k, tau, lam = name.split("_")
            lines.append(f"| {k[1:]}, {tau[3:]}, {lam[3:]} | {value:.4f} |")
    lines += [
        "",
        f"LeanTTA latency ratio: float {lt['latency_ratio_float']:.2f}x, "
        f"int8 {lt['latency_ratio_int8']:.2f}x",
    ]
    mem = results["memory"]
    default = mem.get("zo_default", {})
    lines += [
        "",
        f"Peak memory (max RSS of a fresh process, {mem['clips']} clips, median of "
        f"{mem.get('repeats', 1)}; zo = default window {default.get('window')}, "
        f"eval_batch {default.get('eval_batch')}; zo_wW_bB = window W, eval_batch B)",
        "",
        "| job | max RSS MiB | ratio to inference |",
        "|---|---|---|",
    ]
    for job, mib in mem["max_rss_mib"].items():
        ratio = mem["ratio_to_inference"].get(job)
        lines.append(f"| {job} | {mib:.1f} | {'' if ratio is None else f'{ratio:.3f}'} |")
    zo = results["zo"]
    lines += [
        "",
        f"ZO few-shot ({zo['parameters']}; {zo['estimator']}; {zo['steps']} steps, "
        f"{zo['seeds']} seeds). Passes to reach plain ZO's final loss (same seed), and to 90 % / "
        f"99 % of plain's loss decrease; plain / subspace",
        "",
        "| task | variant | plain / subspace final loss | passes to plain's final | "
        "passes to 90 % | passes to 99 % | fewer? |",
        "|---|---|---|---|---|---|---|",
    ]
    for corruption, task in zo["tasks"].items():
        for variant, rows in task["summary"].items():
            for row in rows:
                lines.append(
                    f"| {corruption} s{row['seed']} | {variant.removeprefix('zo_subspace_')} | "
                    f"{row['plain_final_loss']:.4f} / {row['subspace_final_loss']:.4f} | "
                    f"{_fmt_passes(row['plain_passes_to_plain_final'])} / "
                    f"{_fmt_passes(row['subspace_passes_to_plain_final'])} | "
                    f"{_fmt_passes(row['plain_passes_to_0.9'])} / "
                    f"{_fmt_passes(row['subspace_passes_to_0.9'])} | "
                    f"{_fmt_passes(row['plain_passes_to_0.99'])} / "
                    f"{_fmt_passes(row['subspace_passes_to_0.99'])} | "
                    f"{'yes' if row['subspace_fewer_passes'] else 'no'} |"
                )
    lines += [
        "",
        f"Subspace ZO reached plain ZO's final loss in fewer passes in "
        f"{zo['claim_holds_runs']} of {zo['claim_runs']} (task, tau, seed) runs.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # memory job in a fresh process: JOB FLOAT INT8 INPUTS
    print(memory_job(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
