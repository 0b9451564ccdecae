"""Writing benchmark results: JSON under bench/results/, a section in BENCHMARKS.md.

Each benchmark owns one section of BENCHMARKS.md, delimited by HTML comments,
and rewrites only that section, stamped with the machine it ran on.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "docs" / "img"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nMeasured by the scripts in `bench/` (`python -m bench.NAME`).\n"


def machine() -> str:
    """One line describing where the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {**payload, "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    path.write_text(json.dumps(payload, indent=2))
    return path


def write_section(name: str, title: str, markdown: str) -> None:
    """Replace (or append) the section of BENCHMARKS.md owned by benchmark ``name``."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    body = (
        f"{start}\n## {title}\n\n"
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. "
        f"Command: `python -m bench.{name}`.\n\n{markdown.strip()}\n{end}"
    )
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else f"{text}\n{body}\n"
    BENCHMARKS_MD.write_text(text)


def median_seconds(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs (after ``warmup`` runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def default_base_model_path() -> Path:
    """The latest registered base model of ``$SECDOOD_DATA_DIR`` as a file (trained if absent)."""
    import tempfile

    from server.jobs import ensure_model
    from server.registry import open_registry
    from server.settings import Settings
    from shared.model_names import BASE_MODEL

    settings = Settings()
    registry = open_registry(settings.database_url, settings.data_dir)
    try:
        record = ensure_model(registry, BASE_MODEL)
        path = (
            Path(tempfile.mkdtemp(prefix="secdood-bench-")) / f"{record.name}-v{record.version}.pt"
        )
        path.write_bytes(registry.artifacts.read_bytes(record.artifact_sha256))
        return path
    finally:
        registry.close()
