"""Service overhead: REST inference against a bare FastAPI ceiling, gRPC download against a read.

    python -m bench.service [--quick] [--model PATH]

Needs ``wrk`` (the script installs nothing; Debian/Ubuntu: ``apt-get install
wrk``). Starts ``secdood-server serve``'s :class:`~server.app.Service` (REST +
gRPC on 127.0.0.1, free ports, a temporary data directory, auth, metrics and
validation on) and :mod:`bench.bare_app` — a bare FastAPI + uvicorn endpoint that
parses the same V2 JSON body, runs ``Linear(128, 6)`` and returns logits and
the Energy score — each in its own child process (:mod:`bench.harness`). Then

* ``POST /v2/models/secdood_base/infer`` with 1, 16 and 64 feature rows per
  request, driven by ``wrk -t2 -c16`` for a few seconds, alternating with the
  same body against the bare endpoint, several times; medians of req/s, rows/s,
  p50 and p99, and the ratios project / bare;
* gRPC ``GetModel`` of the float artifact via :class:`GatewayClient` (stream,
  sha256 check, fsync'd file) from 1, 4 and 16 client threads, against reading
  the blob from the artifact store with its sha256 verified.

Writes bench/results/service.json and the "service" section of BENCHMARKS.md.

The model is ``--model PATH``, else the default base model of
``$SECDOOD_DATA_DIR``, trained first if absent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from bench.harness import (
    ClientFactory,
    Request,
    RunningService,
    WrkResult,
    bench_settings,
    cpu_seconds,
    register_artifact,
    run_load,
    run_wrk,
    serve,
    serve_ceiling,
    untrained_base_bundle,
    wrk_command,
)
from bench.report import markdown_table, write_json, write_section
from server.settings import Settings
from shared.model_names import BASE_MODEL as MODEL_NAME
from shared.models.checkpoint import ModelBundle, bundle_to_bytes, load_bundle
from shared.pipeline import DEFAULT_DETECTOR, OODPipeline

CONCURRENCY = (1, 4, 16)
#: feature rows per V2 request (batching is the V2 way to score faster)
BATCH_SIZES = (1, 16, 64)
#: (wrk runs per side and batch size, seconds each): full run, --quick
WRK_RUNS = {"full": (3, 5), "quick": (1, 2)}
DOWNLOAD_REQUESTS = {"full": 20, "quick": 16}


# -- the two calls, served and in process -------------------------------------------------


def infer_body(rows: np.ndarray) -> dict[str, Any]:
    """Open Inference Protocol request for one feature row [D] or a batch [N, D] (float32)."""
    batch = np.atleast_2d(np.asarray(rows, dtype=np.float32))
    return {
        "inputs": [
            {
                "name": "features",
                "shape": [int(n) for n in batch.shape],
                "datatype": "FP32",
                "data": [float(v) for v in batch.ravel()],
            }
        ]
    }


def rest_infer_client(
    service: RunningService, rows: np.ndarray
) -> Callable[[int], AbstractContextManager[Request]]:
    """Clients that POST one row at a time (cycling through ``rows`` [K, D]) to /infer."""
    bodies = [infer_body(row) for row in rows]
    url = f"/v2/models/{MODEL_NAME}/infer"

    @contextmanager
    def open_client(index: int) -> Iterator[Request]:
        headers = {"X-API-Key": service.scoring_key}
        with httpx.Client(base_url=service.rest_url, headers=headers, timeout=60) as client:
            sent = iter(range(sys.maxsize))

            def send() -> object:
                body = bodies[(index + next(sent)) % len(bodies)]
                response = client.post(url, json=body)
                if response.status_code != 200:
                    raise RuntimeError(f"infer answered {response.status_code}: {response.text}")
                return response.json()

            yield send

    return open_client


def in_process_infer_client(
    pipeline: OODPipeline, rows: np.ndarray
) -> Callable[[int], AbstractContextManager[Request]]:
    """What the /infer route computes per request, called directly: score one row [1, D]."""
    tensors = [torch.from_numpy(np.ascontiguousarray(row[None], dtype=np.float32)) for row in rows]

    def open_client(index: int) -> AbstractContextManager[Request]:
        sent = iter(range(sys.maxsize))

        def send() -> object:
            return pipeline.score_features(tensors[(index + next(sent)) % len(tensors)])

        return nullcontext(send)

    return open_client


def grpc_download_client(
    service: RunningService, token: str, folder: Path
) -> Callable[[int], AbstractContextManager[Request]]:
    """Clients that download the float artifact via GetModel into their own file."""
    from device_client.gateway_client import GatewayClient

    @contextmanager
    def open_client(index: int) -> Iterator[Request]:
        destination = folder / f"client-{index}.pt"
        with GatewayClient(service.grpc_target, token) as gateway:
            yield lambda: gateway.download_model(destination, MODEL_NAME)

    return open_client


def in_process_read_client(
    artifacts: Any, sha256: str
) -> Callable[[int], AbstractContextManager[Request]]:
    """The artifact store read the download starts from, sha256 verified, without transport."""

    def open_client(index: int) -> AbstractContextManager[Request]:
        return nullcontext(lambda: artifacts.read_bytes(sha256, verify=True))

    return open_client


def enroll_device(service: RunningService, name: str = "bench-device") -> str:
    """Enrol one device; its token authenticates every download client."""
    from device_client.gateway_client import GatewayClient

    with GatewayClient(service.grpc_target) as gateway:
        return gateway.enroll(service.enrollment_key, name).token


# -- comparison and report ----------------------------------------------------------------


def compare(
    served: ClientFactory,
    in_process: ClientFactory,
    total: int,
    levels: tuple[int, ...] = CONCURRENCY,
    warmup: int = 1,
) -> list[dict[str, Any]]:
    """Both sides at every concurrency level, with the overhead ratios."""
    rows = []
    for clients in levels:
        service = run_load(served, clients, total, warmup)
        local = run_load(in_process, clients, total, warmup)
        rows.append(
            {
                "clients": clients,
                "service": service.summary(),
                "in_process": local.summary(),
                "p50_ratio": service.p50_ms / local.p50_ms,
                "throughput_ratio": service.requests_per_s / local.requests_per_s,
            }
        )
    return rows


def table_rows(call: str, baseline: str, results: list[dict[str, Any]]) -> list[list[Any]]:
    """One markdown row per concurrency level (ms to 0.01, req/s to 1, ratios to 0.01)."""
    rows = []
    for r in results:
        service, local = r["service"], r["in_process"]
        rows.append(
            [
                call,
                baseline,
                r["clients"],
                f"{service['p50_ms']:.2f}",
                f"{service['p99_ms']:.2f}",
                f"{service['requests_per_s']:.0f}",
                f"{local['p50_ms']:.2f}",
                f"{local['p99_ms']:.2f}",
                f"{local['requests_per_s']:.0f}",
                f"{r['p50_ratio']:.2f}",
                f"{r['throughput_ratio']:.2f}",
            ]
        )
    return rows


HEADERS = [
    "service call",
    "in-process baseline",
    "clients",
    "service p50 ms",
    "service p99 ms",
    "service req/s",
    "in-process p50 ms",
    "in-process p99 ms",
    "in-process req/s",
    "p50 ratio",
    "req/s ratio",
]


def load_artifact(model_path: Path | None) -> tuple[bytes, str]:
    """The base-model artifact to serve (bytes) and where it came from.

    ``model_path``, else the latest base model registered in ``$SECDOOD_DATA_DIR``,
    else an untrained stand-in of the default size (serving cost does not depend
    on the weights).
    """
    if model_path is not None:
        return bundle_to_bytes(load_bundle(model_path)), str(model_path)
    from server.registry import NotFoundError, open_registry

    settings = Settings()
    if settings.data_dir.exists():
        with open_registry(settings.database_url, settings.data_dir) as registry:
            try:
                record = registry.get_model(MODEL_NAME, None, "float")
            except NotFoundError:
                record = None
            if record is not None:
                data = registry.artifacts.read_bytes(record.artifact_sha256, verify=True)
                return data, f"{record.name} v{record.version} in {settings.data_dir}"
    stand_in = untrained_base_bundle()
    return bundle_to_bytes(stand_in), "untrained stand-in (default size; no trained model found)"


def feature_rows(bundle: ModelBundle, count: int = 64) -> np.ndarray:
    """Real ID embeddings [count, D] from the artifact's reference set, as request payloads."""
    return bundle.reference_features[:count].numpy().astype(np.float32)


def rest_against_ceiling(
    service: RunningService,
    ceiling: tuple[str, int],
    rows: np.ndarray,
    batch_sizes: tuple[int, ...],
    repeats: int,
    seconds: int,
) -> list[dict[str, Any]]:
    """wrk against the bare endpoint and the project's, alternating; medians and ratios.

    Besides wrk's numbers, each server's CPU time per request is read from
    ``/proc``: on a shared machine it is steadier than req/s, and its inverse
    ratio is the req/s ratio that one dedicated core would give.
    """
    ceiling_url, ceiling_pid = ceiling
    path = f"/v2/models/{MODEL_NAME}/infer"
    targets = {
        "bare": (ceiling_url + path, {}, ceiling_pid),
        "project": (service.rest_url + path, {"X-API-Key": service.scoring_key}, service.pid),
    }
    results = []
    for batch in batch_sizes:
        body = json.dumps(infer_body(rows[:batch])).encode()
        runs: dict[str, list[tuple[WrkResult, float]]] = {"bare": [], "project": []}
        for _ in range(repeats):
            for side, (url, headers, pid) in targets.items():
                cpu_before = cpu_seconds(pid)
                result = run_wrk(url, body, headers, seconds=seconds)
                runs[side].append((result, (cpu_seconds(pid) - cpu_before) / result.requests))
        sides = {
            side: {
                "requests_per_s": statistics.median(r.requests_per_s for r, _ in measured),
                "rows_per_s": batch * statistics.median(r.requests_per_s for r, _ in measured),
                "p50_ms": statistics.median(r.p50_ms for r, _ in measured),
                "p99_ms": statistics.median(r.p99_ms for r, _ in measured),
                "cpu_ms_per_request": 1e3 * statistics.median(cpu for _, cpu in measured),
                "runs_requests_per_s": [r.requests_per_s for r, _ in measured],
            }
            for side, measured in runs.items()
        }
        bare, project = sides["bare"], sides["project"]
        results.append(
            {
                "rows_per_request": batch,
                **sides,
                "throughput_ratio": project["requests_per_s"] / bare["requests_per_s"],
                "cpu_ratio": bare["cpu_ms_per_request"] / project["cpu_ms_per_request"],
                "p99_ratio": project["p99_ms"] / bare["p99_ms"],
            }
        )
        print(
            f"  {batch} rows/request: project {project['requests_per_s']:.0f} req/s "
            f"({project['cpu_ms_per_request']:.2f} CPU ms/req), bare "
            f"{bare['requests_per_s']:.0f} req/s ({bare['cpu_ms_per_request']:.2f} CPU ms/req), "
            f"ratio {results[-1]['throughput_ratio']:.2f}, "
            f"CPU ratio {results[-1]['cpu_ratio']:.2f}",
            flush=True,
        )
    return results


REST_HEADERS = [
    "rows / request",
    "project req/s",
    "bare req/s",
    "req/s ratio",
    "project CPU ms/req",
    "bare CPU ms/req",
    "bare / project CPU",
    "project rows/s",
    "project p50 ms",
    "bare p50 ms",
    "project p99 ms",
    "bare p99 ms",
    "p99 ratio",
]


def rest_table_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """One markdown row per batch size (req/s to 1, ms to 0.01, ratios to 0.01)."""
    return [
        [
            r["rows_per_request"],
            f"{r['project']['requests_per_s']:.0f}",
            f"{r['bare']['requests_per_s']:.0f}",
            f"{r['throughput_ratio']:.2f}",
            f"{r['project']['cpu_ms_per_request']:.3f}",
            f"{r['bare']['cpu_ms_per_request']:.3f}",
            f"{r['cpu_ratio']:.2f}",
            f"{r['project']['rows_per_s']:.0f}",
            f"{r['project']['p50_ms']:.2f}",
            f"{r['bare']['p50_ms']:.2f}",
            f"{r['project']['p99_ms']:.2f}",
            f"{r['bare']['p99_ms']:.2f}",
            f"{r['p99_ratio']:.2f}",
        ]
        for r in results
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter and fewer runs")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="base-model artifact (.pt); default: the latest model of $SECDOOD_DATA_DIR, "
        "else an untrained stand-in of the default size",
    )
    args = parser.parse_args(argv)
    wrk_command()  # fail early, saying how to install it
    torch.set_num_threads(1)
    mode = "quick" if args.quick else "full"
    repeats, seconds = WRK_RUNS[mode]

    from server.registry import open_registry
    from shared.models.checkpoint import bundle_from_bytes

    artifact, source = load_artifact(args.model)
    bundle = bundle_from_bytes(artifact)
    rows = feature_rows(bundle)

    with tempfile.TemporaryDirectory(prefix="secdood-bench-service-") as temp:
        data_dir = Path(temp) / "data"
        downloads = Path(temp) / "downloads"
        downloads.mkdir()
        sha256 = register_artifact(data_dir, artifact)
        settings = bench_settings(data_dir)
        with serve(settings) as service, serve_ceiling() as ceiling:
            rest = rest_against_ceiling(service, ceiling, rows, BATCH_SIZES, repeats, seconds)
        with serve(settings) as service, open_registry(None, data_dir) as registry:
            token = enroll_device(service)
            download = compare(
                grpc_download_client(service, token, downloads),
                in_process_read_client(registry.artifacts, sha256),
                DOWNLOAD_REQUESTS[mode],
            )

    rest_table = markdown_table(REST_HEADERS, rest_table_rows(rest))
    download_table = markdown_table(
        HEADERS,
        table_rows(
            f"gRPC GetModel ({len(artifact) / 1e6:.2f} MB)", "store read + sha256", download
        ),
    )
    write_json(
        "service",
        {
            "model": source,
            "artifact_bytes": len(artifact),
            "detector": DEFAULT_DETECTOR,
            "mode": mode,
            "wrk": {"threads": 2, "connections": 16, "seconds": seconds, "runs": repeats},
            "downloads_per_level": DOWNLOAD_REQUESTS[mode],
            "rest_infer": rest,
            "grpc_download": download,
        },
    )
    summary = (
        f"Model: `{source}` ({len(artifact) / 1e6:.2f} MB artifact), detector "
        f"`{DEFAULT_DETECTOR}`, embeddings D = {bundle.config.embed_dim}.\n\n"
        f"**REST inference vs the bare FastAPI ceiling.** The service (REST + gRPC in one "
        f"process, torch 1 thread, scoring key, metrics, body limit and V2 validation on) and "
        f"`bench/bare_app.py` (FastAPI + uvicorn, one worker: parse the same V2 JSON, "
        f"`Linear(128, 6)`, logits + Energy, nothing else) each run in a child process on "
        f"127.0.0.1; `wrk -t2 -c16 -d{seconds:g}s` posts the same body to each, alternating, "
        f"{repeats} runs each; medians. Ratio = project / bare (goal: req/s ratio ≥ 0.6 and "
        f"p99 ratio ≤ 3 at 1 row). CPU ms/req is each server process's CPU time over the run "
        f"(/proc) per request; bare / project CPU is the req/s ratio one dedicated core "
        f"would give, and is steadier than req/s on a shared machine. wrk shares the "
        f"two cores with the server, as in "
        f"production load tests on one box. The machine was shared with other jobs: "
        f"absolute numbers are noisy, the ratios were measured side by side.\n\n{rest_table}"
        f"\n\n**gRPC model download vs reading the blob.** N client threads, each with its "
        f"own channel, download the float artifact {DOWNLOAD_REQUESTS[mode]} times per level "
        f"in total (stream, sha256 check, fsync'd file); the baseline reads it from the "
        f"artifact store with its sha256 verified (no transport). Ratio = service / read; "
        f"p99 of {DOWNLOAD_REQUESTS[mode]} downloads is about the maximum.\n\n{download_table}"
    )
    write_section("service", "Service overhead: REST inference and gRPC download", summary)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
