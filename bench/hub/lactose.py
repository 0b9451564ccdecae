"""LACTOSE vs one unconditioned net of the same size on the piecewise waveshaper; curve plot."""

from __future__ import annotations

from typing import Any

import torch

from bench.report import IMAGES, markdown_table
from server.training.lactose import SWITCH_POINTS, TRAINER, LactoseConfig, reference_shaper

STEPS = 1500
QUICK_STEPS = 300
PLOT = IMAGES / "lactose_transfer.png"


def plot_transfer_curves(models: dict[str, torch.nn.Module], path=PLOT) -> None:
    """Output vs input sample for drives on and between the boundaries: truth and each model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drives = [0.2, SWITCH_POINTS[0], 0.5, SWITCH_POINTS[1], 0.85, 1.0]
    x = torch.linspace(-1, 1, 401)
    fig, axes = plt.subplots(1, len(drives), figsize=(3 * len(drives), 3), sharey=True)
    for ax, drive in zip(axes, drives, strict=True):
        c = torch.full_like(x, drive)
        ax.plot(x, reference_shaper(x, c), "k--", lw=2, label="target")
        with torch.no_grad():
            for name, model in models.items():
                ax.plot(x, model(torch.stack([x, c], 1), c)[:, 0], lw=1.2, label=name)
        ax.set_title(f"drive c = {drive:.3g}")
        ax.set_xlabel("input sample x")
    axes[0].set_ylabel("output sample")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def benchmark(quick: bool) -> dict[str, Any]:
    """Test error of LACTOSE and the baseline; the plot is redrawn by the full run only."""
    torch.set_num_threads(1)
    steps = QUICK_STEPS if quick else STEPS
    results, models = {}, {}
    for name, conditioned in (("lactose", True), ("unconditioned", False)):
        result = TRAINER.train(LactoseConfig(conditioned=conditioned, steps=steps))
        results[name] = result.metrics
        models[name] = TRAINER.load(result.state)
    if not quick:
        plot_transfer_curves(models)
    return {
        "task": "piecewise waveshaper (soft clip / hard clip / fold switching at drive 1/3, 2/3), "
        "audio synthesised on the fly",
        "config": LactoseConfig(steps=steps).model_dump(),
        "results": results,
        "plot": str(PLOT.relative_to(PLOT.parents[2])) if not quick else None,
    }


def markdown(r: dict[str, Any]) -> str:
    """One row per model."""
    rows = [
        [
            name,
            m["parameters"],
            f"{m['test_mse']:.5f}",
            f"{m['test_snr_db']:.1f}",
            f"{m['boundary_mse']:.4f}",
            f"{m['train_seconds']:.1f}",
        ]
        for name, m in r["results"].items()
    ]
    cfg = r["config"]
    plot = f"\n\nTransfer curves: `{r['plot']}`." if r.get("plot") else ""
    return (
        f"{r['task']}; boundaries {[round(b, 3) for b in cfg['boundaries']]}, hidden "
        f"{cfg['hidden']} per interval, {cfg['steps']} Adam steps of "
        f"{cfg['clips_per_step']}x{cfg['clip_length']} samples.\n\n"
        + markdown_table(
            ["model", "parameters", "test MSE", "SNR dB", "MSE on boundaries", "train s"], rows
        )
        + plot
    )
