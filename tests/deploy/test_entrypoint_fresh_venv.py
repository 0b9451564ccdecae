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
import time
from pathlib import Path

import httpx
import pytest
from support import make_tiny_bundle

from server.registry import open_registry
from shared.models.checkpoint import bundle_to_bytes

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_entrypoint_from_a_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    constraints = ["-c", str(ROOT / "constraints.txt")]
    subprocess.run([*pip, *constraints, "torch"], check=True)
    subprocess.run([*pip, *constraints, f"{ROOT}[server]"], check=True)

    data_dir = tmp_path / "data"
    with open_registry(None, data_dir) as registry:
        registry.register_model(
            "secdood_base", "secdood_base", {}, {}, bundle_to_bytes(make_tiny_bundle())
        )
    rest_port = _free_port()
    env = dict(
        os.environ,
        SECDOOD_DATA_DIR=str(data_dir),
        SECDOOD_REST_PORT=str(rest_port),
        SECDOOD_GRPC_PORT=str(_free_port()),
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
    try:
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline and not ready:
            assert proc.poll() is None, log.read_text()
            try:
                ready = (
                    httpx.get(f"http://127.0.0.1:{rest_port}/v2/health/ready").status_code == 200
                )
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        assert ready, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
