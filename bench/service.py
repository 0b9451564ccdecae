"""Service overhead: REST inference and gRPC model download next to the same work in process.

    python -m bench.service [--quick] [--model PATH]

Starts ``secdood-server serve``'s :class:`~server.app.Service` (REST + gRPC on
127.0.0.1, free ports, a temporary data directory) in a child process, so the
server has its own interpreter and the load generator does not share its GIL.
Then, with 1, 4 and 16 concurrent client threads (each with its own keep-alive
connection), it measures

* ``POST /v2/models/secdood_base/infer`` on one feature row [1, D], against the
  in-process call the route makes (:meth:`OODPipeline.score_features`, energy
  detector, threshold → verdict);
* gRPC ``GetModel`` of the float artifact via :class:`GatewayClient` (stream,
  sha256 check, fsync'd file), against reading the blob from the artifact store
  with its sha256 verified.

Per request latency p50/p99 and requests/s (total requests / wall time) for
both, and the overhead as ratios: service p50 / in-process p50 and service
req/s / in-process req/s. Writes bench/results/service.json and the "service"
section of BENCHMARKS.md.

The model is ``--model PATH``, else the default base model of
``$SECDOOD_DATA_DIR``, trained first if absent.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from pydantic import SecretStr

from bench.report import markdown_table, write_json, write_section
from server.settings import Settings
from shared.models.checkpoint import ModelBundle, bundle_to_bytes, load_bundle
from shared.pipeline import DEFAULT_DETECTOR, OODPipeline

MODEL_NAME = "secdood_base"
CONCURRENCY = (1, 4, 16)
#: requests per concurrency level (split evenly over the clients): full run, --quick
INFER_REQUESTS = {"full": 200, "quick": 48}
DOWNLOAD_REQUESTS = {"full": 20, "quick": 16}
#: upper bound on any single wait (server start, a client thread), seconds
WAIT_LIMIT_S = 300.0

#: one client's request: performs it once, raises on failure
Request = Callable[[], object]
#: opens client number ``i`` (its own connection) and yields its request function
ClientFactory = Callable[[int], AbstractContextManager[Request]]


# -- load generation -----------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    """Latencies of ``len(latencies_s)`` requests sent by ``clients`` threads in ``wall_s``."""

    clients: int
    latencies_s: tuple[float, ...]
    wall_s: float

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies_s, 50) * 1e3)

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_s, 99) * 1e3)

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s

    def summary(self) -> dict[str, float | int]:
        return {
            "clients": self.clients,
            "requests": len(self.latencies_s),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "requests_per_s": self.requests_per_s,
            "wall_s": self.wall_s,
        }


def split_requests(total: int, clients: int) -> list[int]:
    """``total`` requests over ``clients`` as evenly as possible (first ones get the rest)."""
    for name, value in (("total", total), ("clients", clients)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if total < clients:
        raise ValueError(f"total ({total}) must be >= clients ({clients}) so every client works")
    share, extra = divmod(total, clients)
    return [share + (index < extra) for index in range(clients)]


def run_load(open_client: ClientFactory, clients: int, total: int, warmup: int = 1) -> LoadResult:
    """Send ``total`` requests from ``clients`` threads at once; time each request.

    Every thread opens its client and sends ``warmup`` untimed requests (connection
    set-up, lazy initialisation) first; the clock starts when all threads are
    ready, and stops when the last one has sent its share.
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    shares = split_requests(total, clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    start_line = threading.Barrier(clients + 1, timeout=WAIT_LIMIT_S)

    def client(index: int) -> None:
        try:
            with open_client(index) as send:
                for _ in range(warmup):
                    send()
                start_line.wait()
                for _ in range(shares[index]):
                    started = time.perf_counter()
                    send()
                    latencies[index].append(time.perf_counter() - started)
        except BaseException as error:  # reported by the main thread
            errors.append(error)
            start_line.abort()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        start_line.wait()
    except threading.BrokenBarrierError:
        pass  # a client failed before the start; its error is raised below
    started = time.perf_counter()
    for thread in threads:
        thread.join(WAIT_LIMIT_S)
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}") from errors[0]
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError(f"clients did not finish within {WAIT_LIMIT_S:.0f} s")
    return LoadResult(clients, tuple(t for per_client in latencies for t in per_client), wall)


# -- the service under test ----------------------------------------------------------------


@dataclass(frozen=True)
class RunningService:
    """Where the started service listens and the keys to use it."""

    rest_url: str
    grpc_target: str
    scoring_key: str
    enrollment_key: str


def bench_settings(data_dir: Path) -> Settings:
    """Loopback, free ports, fresh keys, no bootstrap training (the model is registered)."""
    return Settings(
        data_dir=data_dir,
        host="127.0.0.1",
        rest_port=0,
        grpc_port=0,
        enrollment_key=SecretStr(secrets.token_urlsafe(16)),
        scoring_api_key=SecretStr(secrets.token_urlsafe(16)),
        admin_api_key=SecretStr(secrets.token_urlsafe(16)),
        bootstrap_model=False,
    )


def register_artifact(data_dir: Path, artifact: bytes) -> str:
    """Register ``artifact`` as the base model in ``data_dir``'s registry; returns its sha256."""
    from server.registry import open_registry

    with open_registry(None, data_dir) as registry:
        return registry.register_model(MODEL_NAME, MODEL_NAME, {}, {}, artifact).artifact_sha256


def _start_ready(settings: Settings) -> Any:
    """Start a :class:`Service` and wait (bounded) until it serves the model."""
    from server.app import Service

    service = Service(settings)
    service.start()
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not service.state.ready:
        if service.bootstrap_error is not None or time.monotonic() > deadline:
            service.stop()
            raise RuntimeError(f"service did not become ready: {service.bootstrap_error!r}")
        time.sleep(0.05)
    return service


def _serve_in_child(settings: Settings, conn: Connection, log_path: str) -> None:
    """Child process body: serve until the parent says stop; logs go to ``log_path``."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    torch.set_num_threads(1)
    try:
        service = _start_ready(settings)
    except BaseException as error:
        conn.send(("error", repr(error)))
        return
    conn.send(("ready", (service.rest_port, service.grpc_port)))
    try:
        conn.recv()  # any message, or the parent closing the pipe, means stop
    except EOFError:
        pass
    service.stop()


@contextmanager
def serve(settings: Settings, in_child: bool = True) -> Iterator[RunningService]:
    """Run the service on ``settings`` (its model already registered) until the block ends.

    ``in_child=False`` runs it in this process (faster to start; shares the GIL
    with the clients, so only for tests).
    """
    keys = (settings.scoring_api_key, settings.enrollment_key)
    if any(key is None for key in keys):
        raise ValueError("settings must set scoring_api_key and enrollment_key")
    scoring, enrollment = (key.get_secret_value() for key in keys)

    def running(rest_port: int, grpc_port: int) -> RunningService:
        host = settings.host
        return RunningService(
            f"http://{host}:{rest_port}", f"{host}:{grpc_port}", scoring, enrollment
        )

    if not in_child:
        service = _start_ready(settings)
        try:
            yield running(service.rest_port, service.grpc_port)
        finally:
            service.stop()
        return

    log_path = settings.data_dir / "service.log"
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(
        target=_serve_in_child, args=(settings, child, str(log_path)), name="service"
    )
    process.start()
    try:
        if not parent.poll(WAIT_LIMIT_S):
            raise TimeoutError(f"service did not start within {WAIT_LIMIT_S:.0f} s; see {log_path}")
        status, detail = parent.recv()
        if status != "ready":
            raise RuntimeError(f"service failed to start: {detail}; see {log_path}")
        yield running(*detail)
    finally:
        if process.is_alive():
            try:
                parent.send("stop")
            except (BrokenPipeError, OSError):
                pass
            process.join(60)
        if process.is_alive():
            process.terminate()
            process.join(10)
        parent.close()


# -- the two calls, served and in process -------------------------------------------------


def infer_body(row: np.ndarray) -> dict[str, Any]:
    """Open Inference Protocol request for one feature row (float32 [D])."""
    return {
        "inputs": [
            {
                "name": "features",
                "shape": [1, int(row.shape[0])],
                "datatype": "FP32",
                "data": [float(v) for v in row],
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
    """The base-model artifact to serve (bytes) and where it came from."""
    if model_path is not None:
        return bundle_to_bytes(load_bundle(model_path)), str(model_path)
    from server.jobs import ensure_model
    from server.registry import open_registry

    settings = Settings()
    registry = open_registry(settings.database_url, settings.data_dir)
    try:
        record = ensure_model(registry, MODEL_NAME)
        data = registry.artifacts.read_bytes(record.artifact_sha256, verify=True)
    finally:
        registry.close()
    return data, f"{record.name} v{record.version} in {settings.data_dir}"


def feature_rows(bundle: ModelBundle, count: int = 64) -> np.ndarray:
    """Real ID embeddings [count, D] from the artifact's reference set, as request payloads."""
    return bundle.reference_features[:count].numpy().astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per level")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="base-model artifact (.pt); default: the latest model of $SECDOOD_DATA_DIR "
        "(trained if absent)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mode = "quick" if args.quick else "full"

    from server.registry import open_registry
    from shared.models.checkpoint import bundle_from_bytes

    artifact, source = load_artifact(args.model)
    bundle = bundle_from_bytes(artifact)
    pipeline = OODPipeline(bundle)
    pipeline.detector(DEFAULT_DETECTOR)  # fitted once up front, as the server does on load
    rows = feature_rows(bundle)

    with tempfile.TemporaryDirectory(prefix="secdood-bench-service-") as temp:
        data_dir = Path(temp) / "data"
        downloads = Path(temp) / "downloads"
        downloads.mkdir()
        sha256 = register_artifact(data_dir, artifact)
        settings = bench_settings(data_dir)
        with serve(settings) as service, open_registry(None, data_dir) as registry:
            token = enroll_device(service)
            infer = compare(
                rest_infer_client(service, rows),
                in_process_infer_client(pipeline, rows),
                INFER_REQUESTS[mode],
            )
            download = compare(
                grpc_download_client(service, token, downloads),
                in_process_read_client(registry.artifacts, sha256),
                DOWNLOAD_REQUESTS[mode],
            )

    table = markdown_table(
        HEADERS,
        table_rows(f"REST infer [1, {bundle.config.embed_dim}]", "score_features", infer)
        + table_rows(
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
            "requests_per_level": {
                "infer": INFER_REQUESTS[mode],
                "download": DOWNLOAD_REQUESTS[mode],
            },
            "rest_infer": infer,
            "grpc_download": download,
        },
    )
    summary = (
        f"Model: `{source}` ({len(artifact) / 1e6:.2f} MB artifact), "
        f"detector `{DEFAULT_DETECTOR}`. "
        f"The service (REST + gRPC, one process, torch 1 thread) runs in a child process on "
        f"127.0.0.1; N client threads, each with its own keep-alive connection, send "
        f"{INFER_REQUESTS[mode]} inference requests / {DOWNLOAD_REQUESTS[mode]} downloads per "
        f"level in total. In-process baselines run with the same threads and counts: "
        f"`OODPipeline.score_features` on the same row (what the route computes), and "
        f"`ArtifactStore.read_bytes(sha256, verify=True)` (the download's source read, no "
        f"transport, no file written). Ratio = service / in-process (p50 ratio > 1: slower; "
        f"req/s ratio < 1: fewer). p99 of {DOWNLOAD_REQUESTS[mode]} downloads is about the "
        f"maximum. Shared 2-core machine: expect noise.\n\n{table}"
    )
    write_section("service", "Service overhead: REST inference and gRPC download", summary)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
