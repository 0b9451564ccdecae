"""Scoring admission: a bounded number run and wait; one more is 429 with Retry-After."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from rest_harness import SCORING

from server.rest import create_app
from server.rest.capacity import OverloadedError, ScoringGate


def test_the_gate_admits_running_plus_waiting_and_refuses_the_next():
    async def scenario() -> list[str]:
        gate = ScoringGate(concurrent=1, waiting=1)
        events: list[str] = []
        release = asyncio.Event()

        async def hold(name: str) -> None:
            async with gate.slot():
                events.append(f"{name} runs")
                await release.wait()

        first = asyncio.create_task(hold("first"))
        second = asyncio.create_task(hold("second"))  # waits for the first
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError, match="limit: 1 at once, 1 waiting"):
            async with gate.slot():
                pass
        release.set()
        await asyncio.gather(first, second)
        async with gate.slot():  # free again
            events.append("third runs")
        return events

    assert asyncio.run(scenario()) == ["first runs", "second runs", "third runs"]


def test_an_overloaded_scoring_route_answers_429_with_retry_after(state):
    app = create_app(state)
    with TestClient(app, raise_server_exceptions=False) as client:
        gate = app.state.scoring_gate
        gate.admitted = gate.limit  # as if every slot were taken
        answer = client.post("/v1/ood/score", json={"features": [[0.5] * 8]}, headers=SCORING)
        assert answer.status_code == 429
        assert answer.headers["Retry-After"] == "1"
        assert "retry shortly" in answer.json()["error"]
        infer = client.post("/v2/models/secdood_base/infer", json={}, headers=SCORING)
        assert infer.status_code == 429
        gate.admitted = 0
        assert client.post(
            "/v1/ood/score", json={"features": [[0.5] * 8]}, headers=SCORING
        ).is_success
