"""Benchmark harness: serve in a child process, drive load, read the numbers.

- :func:`serve` runs ``secdood-server serve``'s :class:`~server.app.Service`
  (REST + gRPC on 127.0.0.1, free ports) in a child process, so the server has
  its own interpreter and the load generator does not share its GIL;
- :func:`serve_ceiling` runs :mod:`bench.bare_app` (the bare FastAPI + uvicorn
  endpoint the REST API is compared with) the same way;
- :func:`run_wrk` drives HTTP load with ``wrk`` (a C load generator, so the
  client is not what limits the numbers; Debian/Ubuntu: ``apt-get install wrk``,
  macOS: ``brew install wrk``); :func:`run_load` drives any other call (gRPC)
  from client threads.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import SecretStr

from server.settings import Settings
from shared.model_names import BASE_MODEL as BASE_MODEL_NAME

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
    #: the serving process (for its CPU time)
    pid: int


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


def register_artifact(data_dir: Path, artifact: bytes, name: str = BASE_MODEL_NAME) -> str:
    """Register ``artifact`` as model and method ``name`` in ``data_dir``; returns its sha256."""
    from server.registry import open_registry

    with open_registry(None, data_dir) as registry:
        return registry.register_model(name, name, {}, {}, artifact).artifact_sha256


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
    # as `secdood-server serve` configures it, so the access log is written and measured
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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

    def running(rest_port: int, grpc_port: int, pid: int) -> RunningService:
        host = settings.host
        return RunningService(
            f"http://{host}:{rest_port}", f"{host}:{grpc_port}", scoring, enrollment, pid
        )

    if not in_child:
        service = _start_ready(settings)
        try:
            yield running(service.rest_port, service.grpc_port, os.getpid())
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
        yield running(*detail, process.pid or 0)
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


# -- the ceiling: a bare FastAPI endpoint ---------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serve_ceiling(host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    """Run :mod:`bench.bare_app` under uvicorn (one worker) in a child process.

    Yields its URL and process id.
    """
    port = free_port(host)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--host", host]
    command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT_LIMIT_S
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"bare app did not start (exit {process.poll()})") from None
                time.sleep(0.05)
        yield f"http://{host}:{port}", process.pid
    finally:
        process.terminate()
        process.wait(30)


# -- HTTP load with wrk -----------------------------------------------------------------------

WRK_MISSING = (
    "wrk is not installed: install it with your package manager "
    "(Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk) and run again"
)

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %%d, "duration_us": %%d, "p50_us": %%.1f, "p99_us": %%.1f, ' ..
    '"errors": %%d, "non_2xx": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: requests completed in ``duration_s``, latency percentiles."""

    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s


def wrk_command() -> str:
    """Path of the ``wrk`` executable; RuntimeError saying how to get it if absent."""
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError(WRK_MISSING)
    return path


def run_wrk(
    url: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    threads: int = 2,
    connections: int = 16,
    seconds: int = 5,
) -> WrkResult:
    """POST ``body`` to ``url`` with wrk for ``seconds``; RuntimeError on any failed request."""
    header_lines = "\n".join(
        f'wrk.headers["{name}"] = "{value}"' for name, value in (headers or {}).items()
    )
    script = _WRK_SCRIPT % {"body": body.decode("utf-8"), "headers": header_lines}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        command = [wrk_command(), f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s"]
        command.append(f"--timeout={WAIT_LIMIT_S:.0f}s")  # slow answers are measured, not dropped
        completed = subprocess.run(
            [*command, "-s", handle.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + WAIT_LIMIT_S,
            check=False,
        )
    finally:
        os.unlink(handle.name)
    summary_lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not summary_lines:
        output = (completed.stderr + completed.stdout).strip()
        raise RuntimeError(f"wrk failed ({completed.returncode}): {output}")
    summary = json.loads(summary_lines[-1])
    if summary["errors"] or summary["non_2xx"]:
        raise RuntimeError(f"wrk saw failed requests against {url}: {summary}")
    return WrkResult(
        summary["requests"],
        summary["duration_us"] / 1e6,
        summary["p50_us"] / 1e3,
        summary["p99_us"] / 1e3,
    )


# -- a stand-in base model for serving benchmarks --------------------------------------------


def untrained_base_bundle(seed: int = 0) -> Any:
    """The default-sized base model (D = 128, 6 classes), randomly initialised and calibrated.

    Serving cost does not depend on the weights' values, so service benchmarks
    use this when no trained model is registered, instead of training one first.
    """
    from shared.data.actions import ID_ACTIONS
    from shared.models.stand_in import untrained_bundle
    from shared.models.two_stream import TwoStreamConfig

    return untrained_bundle(
        TwoStreamConfig(num_classes=len(ID_ACTIONS)),
        ID_ACTIONS,
        seed,
        generator=torch.Generator().manual_seed(seed),
        train_config={"untrained_stand_in": True},
    )
