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

from bench.report import write_json, write_section

#: benchmark family → module with ``benchmark(quick) -> dict``
FAMILIES = {
    "predictive_coding": "server.methods.predictive_coding",
    "forward_forward": "server.methods.forward_forward",
    "ebp": "server.methods.ebp",
}


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    """Nested dict → ``(dotted key, value)`` rows for a readable markdown listing."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        shown = f"{value:.4f}" if isinstance(value, float) else json.dumps(value)
        out.append((prefix, shown))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes in all")
    parser.add_argument("--only", help=f"comma-separated subset of {sorted(FAMILIES)}")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(FAMILIES)
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {sorted(FAMILIES)}")

    results: dict[str, Any] = {"quick": args.quick}
    sections = []
    for name in names:
        started = time.perf_counter()
        print(f"[bench.methods] {name} ...", flush=True)
        result = importlib.import_module(FAMILIES[name]).benchmark(args.quick)
        result["bench_wall_seconds"] = round(time.perf_counter() - started, 1)
        results[name] = result
        rows: list[tuple[str, str]] = []
        _flatten("", result, rows)
        listing = "\n".join(f"| `{key}` | {value} |" for key, value in rows)
        sections.append(f"### {name}\n\n| metric | value |\n|---|---|\n{listing}")
    write_json("methods", results)
    mode = "quick" if args.quick else "full"
    summary = (
        f"Mode: {mode}. Each method's page in docs/algorithms/ explains the protocol "
        "and compares with the paper.\n\n" + "\n\n".join(sections)
    )
    write_section("methods", "Training hub: backprop-free methods", summary)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
