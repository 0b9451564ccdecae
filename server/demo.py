"""``make demo``: the product on the built-in data, from a fresh clone.

Trains the default base model if the registry has none (a few minutes on two
CPU cores, with a progress bar), evaluates it — ID accuracy, every OOD detector
on near- and far-OOD clips, the device-shift table — and prints the report.
"""

from __future__ import annotations

import sys
import time

from server.cli import BASE_MODEL, open_registry
from server.evaluation import evaluate, format_report
from server.jobs import JobRunner
from server.registry.errors import NotFoundError
from server.settings import Settings
from shared.models.checkpoint import bundle_from_bytes


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def ensure_base_model(registry) -> object:
    """The latest registered base model, training it first when there is none."""
    try:
        return registry.get_model(BASE_MODEL)
    except NotFoundError:
        section("Training the default base model (first run only)")
        _, record = JobRunner(registry).run(BASE_MODEL, {})
        return record


def main() -> int:
    settings = Settings()
    registry = open_registry(settings)
    started = time.perf_counter()
    record = ensure_base_model(registry)
    print(f"model {record.name} v{record.version} (sha256 {record.artifact_sha256[:12]}…)")
    bundle = bundle_from_bytes(registry.artifacts.read_bytes(record.artifact_sha256))

    section("Evaluation on the built-in digit-actions clips")
    print(format_report(evaluate(bundle)))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; data in {settings.data_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
