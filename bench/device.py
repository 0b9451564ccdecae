"""Device benchmarks: int8 vs float, LeanTTA vs baselines under shift, memory, zeroth order.

    python -m bench.device [--quick] [--model FLOAT.pt]

Exports the int8 artifact from the float model (as ``secdood-server export --int8`` does), runs
every section — ``int8`` (:mod:`device_client.measure`), ``validation`` / ``leantta`` /
``baselines`` (settings chosen on validation shifts, test shifts once: :mod:`bench.device_shift`),
``memory`` (:mod:`bench.device_memory`), ``zo`` (:mod:`bench.device_zo`) — writes
``bench/results/device.json``, prints the markdown tables (:mod:`bench.device_tables`), plots
the ZO few-shot curves to ``docs/img/zo_few_shot.png`` and (full runs only) rewrites the
``device`` section of BENCHMARKS.md. Without ``--model`` the latest registered base model of
``$SECDOOD_DATA_DIR`` is used (trained first if there is none).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.device_memory import memory_section
from bench.device_shift import run_test_shifts, validation_sweeps
from bench.device_tables import markdown_tables
from bench.device_zo import zo_section
from bench.report import default_base_model_path, write_section
from device_client.measure import int8_vs_float
from server.export import export_int8_bytes
from shared.models.checkpoint import load_bundle

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "device.json"
PLOT = ROOT / "docs" / "img" / "zo_few_shot.png"


def plot_zo(zo: dict, path: Path) -> None:
    """One panel per few-shot task: loss against forward passes, every variant and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = zo["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, task in zip(axes[0], tasks.values(), strict=True):
        # every variant converges to the same optimum: plot the excess over the best loss seen
        best = min(loss for runs in task["runs"].values() for r in runs for _, loss in r["history"])
        for index, (name, runs) in enumerate(task["runs"].items()):
            for i, run in enumerate(runs):
                passes, losses = zip(*run["history"], strict=True)
                excess = [max(loss - best, 1e-7) for loss in losses]
                label = name if i == 0 else None
                ax.plot(passes, excess, color=colours(index), alpha=0.7, lw=1, label=label)
        ax.set_xlabel("forward passes (backprop: steps)")
        ax.set_ylabel("few-shot cross-entropy - best reached")
        ax.set_yscale("log")
        ax.set_title(task["task"], fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_device_benchmark(
    float_path: Path, int8_path: Path, out: Path, quick: bool = False
) -> dict[str, Any]:
    """Run every section, write ``out`` (JSON) and return the results."""
    torch.set_num_threads(1)
    started = time.time()
    results: dict[str, Any] = {
        "quick": quick,
        "machine": {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    n_shift = 16 if quick else 96
    print("int8 vs float ...", file=sys.stderr)
    results["int8"] = int8_vs_float(float_path, int8_path, 120 if quick else 600)
    print("validation shifts: choosing settings ...", file=sys.stderr)
    results["validation"] = validation_sweeps(float_path, n_shift)
    print("test shifts: once, chosen settings ...", file=sys.stderr)
    results["leantta"], results["baselines"] = run_test_shifts(
        float_path, int8_path, n_shift, results["validation"]["chosen"]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--model", type=Path, help="float artifact; default: the registry's latest base model"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.model is None:
        args.model = default_base_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = Path(tmp) / "int8.pt"
        int8_path.write_bytes(export_int8_bytes(load_bundle(args.model)))
        results = run_device_benchmark(args.model, int8_path, args.out, quick=args.quick)
    plot_zo(results["zo"], PLOT)
    if not args.quick:
        title = f"Device runtime (model `{args.model.name}`)"
        write_section(name="device", title=title, markdown=markdown_tables(results))


if __name__ == "__main__":
    main()
