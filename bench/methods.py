"""Every backprop-free method of the training hub, trained and measured in one run.

    python -m bench.methods [--quick] [--only predictive_coding,forward_forward,ebp]

Each method module's ``benchmark(quick)`` returns its headline metrics and
train seconds; this script gathers them into bench/results/methods.json and
the "methods" section of BENCHMARKS.md. The full run takes a long time (EBP
on the five text tasks dominates; see docs/algorithms/ebp.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from typing import Any

from bench.report import RESULTS, markdown_table, write_json, write_section

#: benchmark family → module with ``benchmark(quick) -> dict``
FAMILIES = {
    "predictive_coding": "server.methods.predictive_coding",
    "forward_forward": "server.methods.forward_forward",
    "ebp": "server.methods.ebp",
}


def _pc_markdown(r: dict[str, Any]) -> str:
    rows = [
        [name, r[name]["test_accuracy"], f"{r[name]['train_seconds']:.1f}"]
        for name in ("pc_bp", "zil", "fa_zil", "il")
    ]
    gap = r["max_abs_weight_diff_vs_bp_100_steps"]
    return (
        f"{r['dataset']}; config {json.dumps(r['config'])}.\n\n"
        + markdown_table(["method", "test accuracy", "train s"], rows)
        + f"\n\nMax |weight − backprop weight| after 100 steps (float64): Z-IL {gap['zil']:.1e}, "
        f"Fa-Z-IL {gap['fa_zil']:.1e}."
    )


def _ff_markdown(r: dict[str, Any]) -> str:
    rows = []
    for encoding, by_method in r["results"].items():
        for method, m in by_method.items():
            rows.append([encoding, method, m["test_accuracy"], f"{m['train_seconds']:.1f}"])
    gap = r["ff_snn_minus_bp_snn"]
    return (
        f"{r['dataset']}, {r['time_steps']} time steps.\n\n"
        + markdown_table(["input", "method", "test accuracy", "train s"], rows)
        + "\n\nFF-SNN − BP-SNN: "
        + ", ".join(f"{enc} {100 * v:+.1f} points" for enc, v in gap.items())
    )


def _ebp_markdown(r: dict[str, Any]) -> str:
    return (
        f"Protocol: {r['protocol']}. Test error %, mean ± std over folds "
        f"({r['total_seconds'] / 60:.0f} min in all).\n\n{r['table_markdown']}"
    )


#: family → compact markdown of its result (the JSON keeps everything)
FORMATTERS = {
    "predictive_coding": _pc_markdown,
    "forward_forward": _ff_markdown,
    "ebp": _ebp_markdown,
}


def render(results: dict[str, Any]) -> str:
    sections = [
        f"### {name}\n\n{FORMATTERS[name](results[name])}" for name in FAMILIES if name in results
    ]
    mode = "quick" if results.get("quick") else "full"
    return (
        f"Mode: {mode}. Each method's page in docs/algorithms/ explains the protocol and "
        "compares with the paper; bench/results/methods.json has every number.\n\n"
        + "\n\n".join(sections)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes in all")
    parser.add_argument("--only", help=f"comma-separated subset of {sorted(FAMILIES)}")
    parser.add_argument(
        "--render", action="store_true", help="rewrite BENCHMARKS.md from the saved JSON only"
    )
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(FAMILIES)
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {sorted(FAMILIES)}")

    if args.render:
        results = json.loads((RESULTS / "methods.json").read_text())
    else:
        results = {"quick": args.quick}
        for name in names:
            started = time.perf_counter()
            print(f"[bench.methods] {name} ...", flush=True)
            result = importlib.import_module(FAMILIES[name]).benchmark(args.quick)
            result["bench_wall_seconds"] = round(time.perf_counter() - started, 1)
            results[name] = result
        write_json("methods", results)
    summary = render(results)
    write_section("methods", "Training hub: backprop-free methods", summary)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
