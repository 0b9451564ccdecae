"""The Docker entrypoint in a fresh virtual environment (no Docker engine here).

Installs the project the way docker/Dockerfile.server does — torch pinned by
constraints.txt, then ``.[server]`` (no dev extras) — into a brand-new venv,
then starts ``secdood-server serve`` from it and waits for readiness. Slow
(a full pip install): run by ``make test-slow``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support import free_loopback_port, make_tiny_bundle, wait_until

from server.registry import open_registry
from shared.model_names import BASE_MODEL
from shared.models.checkpoint import bundle_to_bytes

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_server_entrypoint_from_a_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    constraints = ["-c", str(ROOT / "constraints.txt")]
    subprocess.run([*pip, *constraints, "torch"], check=True)
    subprocess.run([*pip, *constraints, f"{ROOT}[server]"], check=True)

    data_dir = tmp_path / "data"
    with open_registry(None, data_dir) as registry:
        registry.register_model(BASE_MODEL, BASE_MODEL, {}, {}, bundle_to_bytes(make_tiny_bundle()))
    rest_port = free_loopback_port()
    env = dict(
        os.environ,
        SECDOOD_DATA_DIR=str(data_dir),
        SECDOOD_REST_PORT=str(rest_port),
        SECDOOD_GRPC_PORT=str(free_loopback_port()),
        SECDOOD_BOOTSTRAP_MODEL="false",
    )
    log = tmp_path / "serve.log"
    # Run from a directory without the source tree: the installed package must suffice.
    proc = subprocess.Popen(
        [str(venv / "bin" / "secdood-server"), "serve"],
        env=env,
        cwd=tmp_path,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{rest_port}/v2/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout=120, interval=0.3, what=f"readiness (log: {log})")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
