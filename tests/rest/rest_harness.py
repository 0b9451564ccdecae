"""Shared pieces of the REST tests: keys, limits and a real uvicorn server in a thread.

(A separate module, not conftest.py, so test files can import it by a unique name.)
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

SCORING_KEY = "scoring-key-for-tests"
ADMIN_KEY = "admin-key-for-tests"
#: small enough that tests can exceed it cheaply, big enough for a few clips as JSON
MAX_UPLOAD_BYTES = 2_000_000

SCORING = {"Authorization": f"Bearer {SCORING_KEY}"}
ADMIN = {"X-API-Key": ADMIN_KEY}


@dataclass
class LiveServer:
    """A uvicorn server on 127.0.0.1 in a background thread."""

    server: uvicorn.Server
    thread: threading.Thread
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host_port(self) -> str:
        """``127.0.0.1:PORT``, the form tritonclient takes."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.thread.is_alive():
            raise RuntimeError("uvicorn server thread did not stop within 10 s")


def start_server(app: FastAPI) -> LiveServer:
    """Serve ``app`` on a port the OS picks; returns once uvicorn accepts connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("uvicorn did not start within 10 s")
        time.sleep(0.01)
    return LiveServer(server, thread, port)
