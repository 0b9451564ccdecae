"""Device benchmarks: int8 vs float, LeanTTA vs baselines under shift, memory, zeroth order.

    python -m bench.device [--quick] [--model FLOAT.pt]

Exports the int8 artifact from the float model (as ``secdood-server export --int8`` does), runs
:func:`device_client.benchmark.run_device_benchmark`, writes ``bench/results/device.json``,
prints the markdown tables, plots the ZO few-shot curves to ``docs/img/zo_few_shot.png`` and
(full runs only) rewrites the ``device`` section of BENCHMARKS.md. Without ``--model`` the
latest registered base model of ``$SECDOOD_DATA_DIR`` is used (trained first if there is none).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench.report import default_base_model_path, write_section
from device_client.benchmark import markdown_tables, run_device_benchmark
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
