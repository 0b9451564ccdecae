"""``secdood-server serve`` as a real process: both servers, readiness, shutdown, restart.

This runs the exact entrypoint the Docker image uses (``secdood-server serve``)
on loopback with free ports, talks to it with real clients (httpx, grpcio
stubs), stops it with SIGTERM and starts it again on the same data directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
import tenseal as ts
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import make_tiny_bundle, wait_until

from device_client.gateway_client import GatewayClient
from server.registry import open_registry
from shared.models.checkpoint import bundle_to_bytes

KEYS = {"enrollment": "enrol-key", "scoring": "score-key", "admin": "admin-key"}
SERVER = shutil.which("secdood-server") or str(Path(sys.executable).parent / "secdood-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, data_dir: Path, bootstrap: bool = True) -> None:
        self.rest_port, self.grpc_port = free_port(), free_port()
        env = dict(
            os.environ,
            SECDOOD_DATA_DIR=str(data_dir),
            SECDOOD_REST_PORT=str(self.rest_port),
            SECDOOD_GRPC_PORT=str(self.grpc_port),
            SECDOOD_ENROLLMENT_KEY=KEYS["enrollment"],
            SECDOOD_SCORING_API_KEY=KEYS["scoring"],
            SECDOOD_ADMIN_API_KEY=KEYS["admin"],
            SECDOOD_BOOTSTRAP_MODEL="true" if bootstrap else "false",
        )
        self.log = data_dir / f"serve-{self.rest_port}.log"
        self.proc = subprocess.Popen(
            [SERVER, "serve"], env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{self.rest_port}"

    def _answers(self, path: str) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"{self.url}{path}", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def wait_live(self, timeout: float = 60) -> None:
        wait_until(lambda: self._answers("/v2/health/live"), timeout, 0.2, "server live")

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_live(timeout)
        wait_until(lambda: self._answers("/v2/health/ready"), timeout, 0.2, "server ready")

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def data_dir(tmp_path) -> Path:
    with open_registry(None, tmp_path) as registry:
        registry.register_model(
            "secdood_base", "secdood_base", {}, {}, bundle_to_bytes(make_tiny_bundle())
        )
    return tmp_path


def grpc_health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def public_context() -> bytes:
    context = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 20, 40])
    context.global_scale = 2**20
    context.make_context_public()
    return context.serialize()


def test_serve_scores_enrols_and_survives_a_restart(data_dir):
    # The model is registered already; no bootstrap training (of the HyperNetwork) wanted.
    server = ServerProcess(data_dir, bootstrap=False)
    try:
        server.wait_ready()
        assert grpc_health(server.grpc_port) == health_pb2.HealthCheckResponse.SERVING
        scoring = {"Authorization": f"Bearer {KEYS['scoring']}"}
        body = {"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                            "data": [0.5] * 8}]}  # fmt: skip
        reply = httpx.post(f"{server.url}/v2/models/secdood_base/infer", json=body, headers=scoring)
        assert reply.status_code == 200, reply.text
        assert {o["name"] for o in reply.json()["outputs"]} >= {"logits", "ood_score", "is_ood"}

        target = f"127.0.0.1:{server.grpc_port}"
        with GatewayClient(target) as client:
            enrolment = client.enroll(KEYS["enrollment"], "cam-1", {"corruption": "fog",
                                                                    "severity": 3})  # fmt: skip
        with GatewayClient(target, token=enrolment.token) as client:
            receipt = client.upload_context(public_context())
        job = httpx.post(
            f"{server.url}/v1/jobs",
            json={"method": "no-such-method"},
            headers={"Authorization": f"Bearer {KEYS['admin']}"},
        )
        assert job.status_code == 422  # unknown method: a clear error, nothing recorded
        assert server.terminate() == 0
    finally:
        server.kill()

    # Same data directory, new process: devices, contexts and models are still there.
    again = ServerProcess(data_dir, bootstrap=False)
    try:
        again.wait_ready()
        admin = {"Authorization": f"Bearer {KEYS['admin']}"}
        devices = httpx.get(f"{again.url}/v1/devices", headers=admin).json()
        names = [d["name"] for d in (devices["devices"] if "devices" in devices else devices)]
        assert names == ["cam-1"]
        with GatewayClient(f"127.0.0.1:{again.grpc_port}", token=enrolment.token) as client:
            info = client.download_model(data_dir / "downloaded.pt")
        assert info.name == "secdood_base" and info.version == 1
        assert again.terminate() == 0
    finally:
        again.kill()
    with open_registry(None, data_dir) as registry:
        context = registry.current_context(enrolment.device_id)
        assert context is not None and context.artifact_sha256 == receipt.sha256
        assert registry.list_jobs() == []


def test_sigterm_during_default_training_exits_within_20_s_and_cancels_the_job(data_dir):
    server = ServerProcess(data_dir, bootstrap=False)
    admin = {"Authorization": f"Bearer {KEYS['admin']}"}
    try:
        server.wait_ready()
        created = httpx.post(
            f"{server.url}/v1/jobs", json={"method": "secdood_base"}, headers=admin, timeout=10
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]

        def running() -> bool:
            job = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=admin, timeout=5).json()
            return job["state"] == "running"

        wait_until(running, 60, 0.2, "training job running")
        time.sleep(1.0)  # well inside the training loop or the data preparation
        started = time.monotonic()
        assert server.terminate(timeout=30) == 0
        assert time.monotonic() - started < 20, server.log.read_text()
    finally:
        server.kill()
    with open_registry(None, data_dir) as registry:
        job = registry.get_job(job_id)
        assert job.state.value == "cancelled", (job.state, job.message)
        assert "shut down" in job.message
        assert [m.version for m in registry.list_models("secdood_base")] == [1]


def test_without_a_model_the_server_is_live_but_not_ready_and_its_data_is_private(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # as an operator might have created it
    server = ServerProcess(data, bootstrap=False)
    try:
        server.wait_live()
        time.sleep(1.0)
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
        assert grpc_health(server.grpc_port) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert server.terminate() == 0
    finally:
        server.kill()
    assert data.stat().st_mode & 0o077 == 0
    assert (data / "registry.sqlite3").stat().st_mode & 0o077 == 0
    log = server.log.read_text()
    assert not [secret for secret in KEYS.values() if secret in log]


def test_generated_keys_are_private_and_stable(tmp_path):
    from server.app import resolve_keys
    from server.settings import Settings

    first = resolve_keys(Settings(data_dir=tmp_path))
    second = resolve_keys(Settings(data_dir=tmp_path))
    assert first.admin_api_key.get_secret_value() == second.admin_api_key.get_secret_value()
    assert first.admin_api_key.get_secret_value() != first.scoring_api_key.get_secret_value()
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    explicit = resolve_keys(Settings(data_dir=tmp_path, admin_api_key="mine"))
    assert explicit.admin_api_key.get_secret_value() == "mine"


def test_jobs_interrupted_by_a_restart_are_marked_failed(data_dir):
    from server.app import Service
    from server.registry.tables import JobState
    from server.settings import Settings

    with open_registry(None, data_dir) as registry:
        running = registry.create_job("zil", {"epochs": 1})
        registry.update_job(running.id, state=JobState.RUNNING, progress=0.4)
        queued = registry.create_job("ff", {})
        finished = registry.create_job("ff", {})
        registry.update_job(finished.id, state=JobState.RUNNING)
        registry.update_job(finished.id, state=JobState.SUCCEEDED)

    settings = Settings(data_dir=data_dir, rest_port=0, grpc_port=0, bootstrap_model=False)
    service = Service(settings)
    service.start()
    try:
        jobs = {job.id: job for job in service.registry.list_jobs()}
        for job_id in (running.id, queued.id):
            assert jobs[job_id].state == JobState.FAILED
            assert "restart" in jobs[job_id].message
        assert jobs[finished.id].state == JobState.SUCCEEDED
    finally:
        service.stop()
