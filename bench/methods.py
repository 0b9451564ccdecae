"""Every method of the training hub, trained and measured in one run.

    python -m bench.methods [--quick] [--only predictive_coding,ebp,...] [--render]

Each family's module in ``bench/hub/`` has ``benchmark(quick) -> dict`` and
``markdown(result) -> str``; this script gathers the results into
bench/results/methods.json (``--only`` replaces just those families and keeps
the others) and the "methods" section of BENCHMARKS.md. The full run takes a
long time (EBP on the five text tasks dominates; see docs/algorithms/ebp.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from typing import Any

from bench.report import RESULTS, write_json, write_section

#: benchmark family → module in bench/hub with ``benchmark`` and ``markdown``
FAMILIES = {
    "predictive_coding": "bench.hub.predictive_coding",
    "forward_forward": "bench.hub.forward_forward",
    "ebp": "bench.hub.ebp",
    "boolean_bp": "bench.hub.boolean_bp",
    "st_rsbp": "bench.hub.st_rsbp",
    "lactose": "bench.hub.lactose",
}


def render(results: dict[str, Any]) -> str:
    """The BENCHMARKS.md section: one compact part per family present in ``results``."""
    sections = [
        f"### {name}\n\n{importlib.import_module(module).markdown(results[name])}"
        for name, module in FAMILIES.items()
        if name in results
    ]
    modes = {name: results[name].get("quick", results.get("quick")) for name in FAMILIES}
    mode = ", ".join(
        f"{name} {'quick' if quick else 'full'}" for name, quick in modes.items() if name in results
    )
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

    saved = RESULTS / "methods.json"
    if args.render:
        results = json.loads(saved.read_text())
    else:
        results = json.loads(saved.read_text()) if args.only and saved.exists() else {}
        for stale in ("machine", "date"):
            results.pop(stale, None)
        for name in names:
            started = time.perf_counter()
            print(f"[bench.methods] {name} ...", flush=True)
            result = importlib.import_module(FAMILIES[name]).benchmark(args.quick)
            result["quick"] = args.quick
            result["bench_wall_seconds"] = round(time.perf_counter() - started, 1)
            results[name] = result
        results["quick"] = args.quick
        write_json("methods", results)
    summary = render(results)
    write_section("methods", "Training hub: backprop-free methods", summary)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
