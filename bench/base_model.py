"""The default base model: training time on this machine, accuracy, OOD and the device shift.

    python -m bench.base_model            # train the default config from scratch (timed)
    python -m bench.base_model --reuse    # evaluate the registry's latest model instead

Writes bench/results/base_model.json and the "base model" section of
BENCHMARKS.md: training wall time, ID accuracy, best detector near/far, and the
per-corruption accuracy table over severities 1–5.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.report import markdown_table, write_json, write_section
from server.evaluation import SEVERITIES, evaluate
from server.jobs import console_progress
from server.registry.bundles import load_registered_bundle
from server.settings import Settings
from server.training.base_model import BaseModelConfig, train_base_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reuse", action="store_true", help="no training: latest registered")
    parser.add_argument("--quick", action="store_true", help="--reuse and 120 shift clips")
    parser.add_argument("--shift-clips", type=int, default=300)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    train_wall = None
    if args.reuse or args.quick:
        record, bundle = load_registered_bundle(Settings(), train_if_missing=True)
        source = f"registry model {record.name} v{record.version}"
    else:
        started = time.perf_counter()
        bundle = train_base_model(BaseModelConfig(), console_progress("train base model"))
        train_wall = time.perf_counter() - started
        source = "trained from scratch with the default config"
    report = evaluate(bundle, shift_clips=120 if args.quick else args.shift_clips)

    best = {
        split: max(report["detectors"].items(), key=lambda item: item[1][split]["auroc"])
        for split in ("near", "far")
    }
    shift = report["shift"]
    rows = [[name, *(v[str(s)] for s in SEVERITIES)] for name, v in shift["per_corruption"].items()]
    rows.append(["**mean**", *(shift["severity"][str(s)] for s in SEVERITIES)])
    drop = shift["clean"] - shift["severity"]["5"]
    lines = [
        f"Model: {source}.",
        "",
        "- training wall time (default config, 2 threads): "
        + (f"**{train_wall:.0f} s**" if train_wall is not None else "not measured (--reuse)"),
        f"- ID test accuracy: **{report['id_accuracy']:.4f}**",
        f"- best near-OOD AUROC: {best['near'][0]} **{best['near'][1]['near']['auroc']:.4f}**; "
        f"best far-OOD AUROC: {best['far'][0]} **{best['far'][1]['far']['auroc']:.4f}**",
        f"- device shift: clean {shift['clean']:.4f} → mean at severity 5 "
        f"{shift['severity']['5']:.4f} (**{100 * drop:.1f} points** lower)",
        "",
        "Accuracy per corruption and severity "
        f"({args.shift_clips if not args.quick else 120} class-balanced ID test clips):",
        "",
        markdown_table(["corruption", *(f"sev {s}" for s in SEVERITIES)], rows),
    ]
    write_json(
        "base_model",
        {"source": source, "train_wall_seconds": train_wall, "metrics": bundle.metrics, **report},
    )
    write_section("base_model", "Base model", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
