"""Fixtures of the REST tests: a service state on the tiny model and real uvicorn servers.

``serve`` / ``live_server`` run uvicorn on 127.0.0.1 (a free port from the OS)
in a background thread, so the main paths go through real HTTP with httpx and
tritonclient; ``client`` is Starlette's in-process TestClient for the many
error cases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from rest_harness import ADMIN_KEY, MAX_UPLOAD_BYTES, SCORING_KEY, LiveServer, start_server

from server.rest import ServiceState, create_app
from server.settings import Settings


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def rest_settings(tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        scoring_api_key=SCORING_KEY,
        admin_api_key=ADMIN_KEY,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        bootstrap_model=False,
    )


@pytest.fixture
def unready_state(registry, rest_settings) -> Iterator[ServiceState]:
    """A service whose model is registered but not loaded yet."""
    state = ServiceState(registry, rest_settings)
    yield state
    state.jobs.shutdown()


@pytest.fixture
def state(unready_state) -> ServiceState:
    unready_state.load_model()
    return unready_state


@pytest.fixture
def client(state) -> Iterator[TestClient]:
    with TestClient(create_app(state), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def serve() -> Iterator[Callable[[FastAPI], LiveServer]]:
    """Start apps on real uvicorn servers; every one is stopped at teardown."""
    running: list[LiveServer] = []

    def start(app: FastAPI) -> LiveServer:
        running.append(start_server(app))
        return running[-1]

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def live_server(state, serve) -> LiveServer:
    return serve(create_app(state))
