"""The key is checked before any request body is read, on every keyed route.

Driven at the ASGI level with a ``receive`` that counts the body bytes the app
takes, so "not read" is observed, not inferred from the status code.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from rest_harness import ADMIN, MAX_UPLOAD_BYTES, SCORING

from server.rest import create_app
from server.rest.body_limit import DRAIN_FACTOR

BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE", "GET"}
PIECE = 64 * 1024


def _keyed_body_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every keyed operation in the OpenAPI document."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            if method.upper() in BODY_METHODS and operation.get("security"):
                found.append((method.upper(), re.sub(r"\{[^}]+\}", "x", path)))
    return found


def _call(app: Any, method: str, path: str, headers: dict[str, str], size: int) -> tuple[int, int]:
    """Send ``size`` body bytes (declared in Content-Length); the status and bytes read."""
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw_headers += [(b"content-length", str(size).encode()), (b"content-type", b"application/json")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    read = 0
    answer: dict[str, int] = {}

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read >= size:
            return {"type": "http.disconnect"}
        piece = min(PIECE, size - read)
        read += piece
        return {"type": "http.request", "body": b"{" * piece, "more_body": read < size}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]

    asyncio.run(app(scope, receive, send))
    return answer["status"], read


@pytest.fixture
def rest_app(state):
    return create_app(state)


def test_every_keyed_route_with_a_body_refuses_a_missing_or_wrong_key_unread(rest_app):
    routes = _keyed_body_routes(rest_app)
    assert ("POST", "/v1/jobs") in routes and ("POST", "/v1/ood/score") in routes
    for method, path in routes:
        status, read = _call(rest_app, method, path, {}, 100_000)
        assert (status, read) == (401, 0), (method, path)
        status, read = _call(rest_app, method, path, {"X-API-Key": "wrong"}, 100_000)
        assert (status, read) == (403, 0), (method, path)


def test_an_oversized_body_is_refused_for_its_key_first_and_not_read(rest_app):
    oversized = MAX_UPLOAD_BYTES + 1
    for headers, route, expected in [
        ({}, "/v1/ood/score", 401),
        ({"X-API-Key": "wrong"}, "/v1/ood/score", 403),
        (SCORING, "/v1/jobs", 403),  # a scoring key on an admin route
        ({}, "/v2/health/live", 405),  # no body is read where none is expected
    ]:
        assert _call(rest_app, "POST", route, headers, oversized) == (expected, 0), route


def test_an_admitted_oversized_body_is_413_and_drained_within_the_bound(rest_app):
    for headers, route in [(SCORING, "/v1/ood/score"), (ADMIN, "/v1/jobs")]:
        status, read = _call(rest_app, "POST", route, headers, MAX_UPLOAD_BYTES + 1)
        assert status == 413
        assert read == MAX_UPLOAD_BYTES + 1  # drained, so the client sees the 413
    status, read = _call(rest_app, "POST", "/v1/ood/score", SCORING, 10 * MAX_UPLOAD_BYTES)
    assert status == 413
    assert read <= DRAIN_FACTOR * MAX_UPLOAD_BYTES + PIECE
