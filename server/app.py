"""``secdood-server serve``: the gRPC device gateway and the REST API in one process.

Start-up order: open the registry (migrations run) → resolve keys → start
gRPC and REST (both *live* at once) → in the background, make sure a base model
exists (train the default one on an empty data directory, progress in the
log) and load it → only then report *ready* (REST ``/v2/health/ready`` and the
gRPC health service) → then, still in the background, export the int8 variant
devices download for ``secdood-device run --int8`` and train the HyperNetwork
for personalisation when they are missing. SIGINT/SIGTERM stop accepting new work, let in-flight
requests finish (grace period), then close the registry.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass, field

import uvicorn
from pydantic import SecretStr

from server.gateway.server import build_grpc_server, set_serving
from server.jobs import JobRunner
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
KEY_FIELDS = ("enrollment_key", "scoring_api_key", "admin_api_key")


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
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = resolve_keys(self.settings)
        self.registry = open_registry(self.settings.database_url, self.settings.data_dir)
        self.jobs = JobRunner(self.registry)
        self.state = ServiceState(self.registry, self.settings, self.jobs)
        self._fail_interrupted_jobs()

        self.grpc_server, self.grpc_port, self.health = build_grpc_server(
            self.registry, self.settings
        )
        self.grpc_server.start()

        ssl = {}
        if self.settings.tls_cert is not None:
            ssl = {"ssl_certfile": str(self.settings.tls_cert)}
            ssl["ssl_keyfile"] = str(self.settings.tls_key)
        config = uvicorn.Config(
            create_app(self.state),
            host=self.settings.host,
            port=self.settings.rest_port,
            log_level="info",
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
        log.info("shutting down: finishing in-flight requests (up to %.0f s)", GRACE_SECONDS)
        set_serving(self.health, False)
        self.rest_server.should_exit = True
        stopped = self.grpc_server.stop(grace=GRACE_SECONDS)
        self._rest_thread.join(GRACE_SECONDS + 5)
        stopped.wait(GRACE_SECONDS + 5)
        self.jobs.shutdown(wait=False)
        self.registry.close()
        log.info("stopped")


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
