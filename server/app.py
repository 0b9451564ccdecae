"""``secdood-server serve``: the gRPC device gateway and the REST API in one process.

Start-up order: open the registry (migrations run) → resolve keys → start
gRPC and REST (both *live* at once) → in the background, make sure a base model
exists (train the default one on an empty data directory, progress in the
log) and load it → only then report *ready* (REST ``/v2/health/ready`` and the
gRPC health service) → then, still in the background, export the int8 variant
devices download for ``secdood-device run --int8`` and train the HyperNetwork
for personalisation when they are missing. SIGINT/SIGTERM first cancel queued
and running training jobs (none registers a model afterwards), then stop
accepting new work and let in-flight requests finish (grace period), then close
the registry — all within :data:`SHUTDOWN_BUDGET_S` (compose gives 20 s).

REST readiness also asks the gRPC gateway's own health service (a real call on
loopback, cached for a second), so a container healthcheck on
``/v2/health/ready`` notices a gateway that stopped answering.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from server.gateway.server import build_grpc_server, set_serving
from server.jobs import JobCancelledError, JobRunner
from server.registry import Registry, open_registry
from server.registry.errors import NotFoundError
from server.registry.tables import JobState
from server.rest.app import create_app
from server.rest.state import ServiceState
from server.settings import Settings
from shared.model_names import BASE_MODEL, HYPERNETWORK

log = logging.getLogger("secdood.serve")

#: seconds in-flight requests get to finish on shutdown
GRACE_SECONDS = 10.0
#: seconds a cancelled training job gets to stop while the servers drain
JOB_STOP_SECONDS = 8.0
#: the whole shutdown stays within this (compose's stop_grace_period is 20 s)
SHUTDOWN_BUDGET_S = 20.0
KEY_FIELDS = ("enrollment_key", "scoring_api_key", "admin_api_key")
#: how long a gRPC health answer counts for REST readiness (seconds)
PROBE_CACHE_S = 1.0
PROBE_TIMEOUT_S = 1.0


#: glibc malloc arenas for the whole process (default 8 × cores): each thread that
#: allocates large buffers (uploads, contexts) otherwise keeps its own arena, and RSS grows
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number for M_ARENA_MAX


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX`` would); False where not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def restrict_permissions(data_dir: Path) -> None:
    """Make the data directory and the SQLite database readable by the owner only."""
    targets = [data_dir, *data_dir.glob("registry.sqlite3*")]
    for path in targets:
        try:
            path.chmod(0o700 if path.is_dir() else 0o600)
        except OSError as error:  # e.g. a mounted volume owned by someone else
            log.warning("cannot restrict permissions of %s: %s", path, error)


class GatewayProbe:
    """Asks the gRPC gateway's health service on loopback whether it is SERVING."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self._lock = threading.Lock()
        self._checked_at = -PROBE_CACHE_S
        self._serving = False

    def __call__(self) -> bool:
        with self._lock:
            if time.monotonic() - self._checked_at < PROBE_CACHE_S:
                return self._serving
            try:
                answer = self._stub.Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=PROBE_TIMEOUT_S
                )
                self._serving = answer.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                self._serving = False
            self._checked_at = time.monotonic()
            return self._serving

    def close(self) -> None:
        self._channel.close()


def resolve_keys(settings: Settings) -> Settings:
    """Fill unset keys from ``data_dir/keys.json``, generating it (mode 0600) on first start.

    A fresh deployment therefore never runs with open endpoints, and the keys
    survive restarts. Keys set in the environment always win.
    """
    path = settings.data_dir / "keys.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [name for name in KEY_FIELDS if getattr(settings, name) is None]
    changed = False
    for name in missing:
        if name not in stored:
            stored[name] = secrets.token_urlsafe(24)
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(stored, handle, indent=2)
        log.info("generated API/enrolment keys for unset settings in %s", path)
    return settings.model_copy(update={name: SecretStr(stored[name]) for name in missing})


@dataclass
class Service:
    """Both servers and the state they share; ``start`` then ``wait``/``stop``."""

    settings: Settings
    registry: Registry = field(init=False)
    state: ServiceState = field(init=False)
    grpc_port: int = field(init=False, default=0)
    rest_port: int = field(init=False, default=0)
    bootstrap_error: BaseException | None = field(init=False, default=None)

    def start(self) -> None:
        limit_malloc_arenas()  # before the server threads start allocating
        self.settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.settings = resolve_keys(self.settings)
        self.registry = open_registry(self.settings.database_url, self.settings.data_dir)
        restrict_permissions(self.settings.data_dir)
        self.jobs = JobRunner(self.registry, self.settings.max_queued_jobs)
        self.state = ServiceState(self.registry, self.settings, self.jobs)
        self._fail_interrupted_jobs()

        self.grpc_server, self.grpc_port, self.health = build_grpc_server(
            self.registry, self.settings
        )
        self.grpc_server.start()
        # Both servers now hold sha256 digests of the keys; drop the plaintext copies.
        self.settings = self.settings.model_copy(update=dict.fromkeys(KEY_FIELDS))
        self.state.settings = self.settings
        self.probe: GatewayProbe | None = None
        if self.settings.tls_cert is None:  # with TLS, readiness trusts the health flag
            host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host
            self.probe = GatewayProbe(f"{host}:{self.grpc_port}")
            self.state.gateway_check = self.probe

        ssl = {}
        if self.settings.tls_cert is not None:
            ssl = {"ssl_certfile": str(self.settings.tls_cert)}
            ssl["ssl_keyfile"] = str(self.settings.tls_key)
        config = uvicorn.Config(
            create_app(self.state),
            host=self.settings.host,
            port=self.settings.rest_port,
            log_level="info",
            access_log=False,  # the lean one in server.rest.metrics replaces uvicorn's
            timeout_graceful_shutdown=int(GRACE_SECONDS),
            **ssl,
        )
        self.rest_server = uvicorn.Server(config)
        self._rest_thread = threading.Thread(target=self.rest_server.run, name="rest", daemon=True)
        self._rest_thread.start()
        self.rest_port = self._wait_for_rest_port()
        log.info(
            "gRPC gateway on %s:%d, REST API on %s:%d (not ready until a model is loaded)",
            self.settings.host,
            self.grpc_port,
            self.settings.host,
            self.rest_port,
        )
        self._bootstrap_thread = threading.Thread(
            target=self._bootstrap, name="bootstrap", daemon=True
        )
        self._bootstrap_thread.start()

    def _fail_interrupted_jobs(self) -> None:
        """Jobs left queued/running by a previous process can never finish: say so."""
        for state in (JobState.QUEUED, JobState.RUNNING):
            for job in self.registry.list_jobs(state=state):
                self.registry.update_job(
                    job.id, state=JobState.FAILED, message="interrupted by a server restart"
                )
                log.warning("job %s (%s) was interrupted by a restart", job.id, job.method)

    def _wait_for_rest_port(self, timeout: float = 30.0) -> int:
        started = threading.Event()
        deadline = threading.Timer(timeout, started.set)
        deadline.start()
        try:
            while not started.wait(0.05):
                if self.rest_server.started:
                    sockets = [s for srv in self.rest_server.servers for s in srv.sockets]
                    return sockets[0].getsockname()[1] if sockets else self.settings.rest_port
                if not self._rest_thread.is_alive():
                    raise OSError(f"REST API failed to start on port {self.settings.rest_port}")
        finally:
            deadline.cancel()
        raise TimeoutError("REST API did not start in time")

    def _bootstrap(self) -> None:
        """Make sure a base model exists and load it; then report ready."""
        try:
            try:
                self.registry.get_model(BASE_MODEL)
            except NotFoundError:
                if not self.settings.bootstrap_model:
                    log.warning(
                        "no %s model and bootstrap is off; not ready until one is registered",
                        BASE_MODEL,
                    )
                    return
                log.info("empty registry: training the default %s model", BASE_MODEL)
                self.jobs.run(BASE_MODEL, {}, progress=_log_progress())
            record = self.state.load_model()
            set_serving(self.health, True)
            log.info("ready: serving %s v%d", record.name, record.version)
            try:
                self._bootstrap_int8()
            except Exception:  # devices still have the float model; say why int8 is missing
                log.exception("int8 export failed; devices can download the float model")
            self._bootstrap_hypernetwork()
        except JobCancelledError:
            log.info("bootstrap training cancelled: the server is shutting down")
        except Exception as exc:  # keep the process alive and say why it is not ready
            self.bootstrap_error = exc
            log.exception("bootstrap failed; the server stays live but not ready")

    def _bootstrap_int8(self) -> None:
        """Devices run ``--int8`` from the variant "int8" of the same version; export it once."""
        from server.export import export_latest_int8

        float_record = self.registry.latest_model(BASE_MODEL, "float")
        try:
            self.registry.get_model(BASE_MODEL, version=float_record.version, variant="int8")
        except NotFoundError:
            if self.settings.bootstrap_model:
                log.info("exporting the int8 variant of %s v%d", BASE_MODEL, float_record.version)
                record = export_latest_int8(self.registry, BASE_MODEL)
                log.info("int8 variant ready (%d bytes)", record.size_bytes)

    def _bootstrap_hypernetwork(self) -> None:
        """Personalisation needs a HyperNetwork; train one after the base model (scoring is
        already served meanwhile; Personalize answers NOT_FOUND until it lands)."""
        try:
            self.registry.get_model(HYPERNETWORK)
        except NotFoundError:
            if self.settings.bootstrap_model:
                log.info("no %s model: training it for personalisation", HYPERNETWORK)
                self.jobs.run(HYPERNETWORK, {}, progress=_log_progress())
                log.info("personalisation ready")

    def wait(self) -> None:
        """Block until the REST server exits (SIGINT/SIGTERM), then stop everything."""
        try:
            while self._rest_thread.is_alive():
                self._rest_thread.join(0.5)
        except KeyboardInterrupt:
            pass
        self.stop()

    def stop(self) -> None:
        """Cancel jobs, drain both servers, close the registry: within SHUTDOWN_BUDGET_S."""
        started = time.monotonic()
        log.info("shutting down: cancelling training jobs")
        set_serving(self.health, False)
        self.rest_server.should_exit = True
        stopped = self.grpc_server.stop(grace=GRACE_SECONDS)
        self.jobs.shutdown(JOB_STOP_SECONDS)
        log.info("finishing in-flight requests (up to %.0f s)", GRACE_SECONDS)
        left = SHUTDOWN_BUDGET_S - 2.0 - (time.monotonic() - started)
        self._rest_thread.join(max(left, 0.1))
        stopped.wait(max(SHUTDOWN_BUDGET_S - 2.0 - (time.monotonic() - started), 0.1))
        if self.probe is not None:
            self.probe.close()
        self.registry.close()
        log.info("stopped in %.1f s", time.monotonic() - started)


def _log_progress():
    last = {"step": -1}

    def report(fraction: float, message: str) -> None:
        step = int(fraction * 20)  # a log line every 5 %
        if step != last["step"]:
            last["step"] = step
            log.info("bootstrap training %3.0f%%: %s", 100 * fraction, message)

    return report


def serve(settings: Settings) -> None:
    """Run both servers until SIGINT/SIGTERM."""
    import signal

    service = Service(settings)
    service.start()

    def _terminate(signum, frame):  # uvicorn runs in a thread: forward the signal to it
        service.rest_server.should_exit = True

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    service.wait()
    if service.jobs.busy():
        # A cancelled trainer is inside a long step (no progress report yet). Its job is
        # recorded as cancelled and it can register nothing; letting the interpreter tear
        # down under running torch code can abort the process, so leave now.
        log.info("exiting while a cancelled trainer finishes its step (nothing is saved)")
        logging.shutdown()
        os._exit(0)
