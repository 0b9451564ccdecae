"""Bounded job queue, ``DELETE /v1/jobs/{id}`` and shutdown: a cancelled job registers nothing."""

from __future__ import annotations

import sys
import threading
import time
import types

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from rest_harness import ADMIN
from support import wait_until

from server.jobs import JobRunner
from server.registry import JobState
from server.training.base import TrainResult
from server.training.catalog import METHOD_PATHS


class SlowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(30.0, gt=0, le=60)


class SlowTrainer:
    """Reports progress every 20 ms until ``seconds`` pass (cancellation arrives through it)."""

    name = "rest_slow"
    config_model = SlowConfig

    def __init__(self) -> None:
        self.started = threading.Event()

    def train(self, config: SlowConfig, progress) -> TrainResult:
        self.started.set()
        deadline = time.monotonic() + config.seconds
        while time.monotonic() < deadline:
            progress(0.5, "working")
            time.sleep(0.02)
        return TrainResult(state={"w": torch.zeros(1)}, metrics={}, config=config.model_dump())

    def load(self, state):
        return state


@pytest.fixture
def slow_trainer(monkeypatch) -> SlowTrainer:
    module = types.ModuleType("rest_slow_method")
    module.TRAINER = SlowTrainer()
    monkeypatch.setitem(sys.modules, "rest_slow_method", module)
    monkeypatch.setitem(METHOD_PATHS, "rest_slow", "rest_slow_method:TRAINER")
    return module.TRAINER


def _state(client, job_id: str) -> str:
    return client.get(f"/v1/jobs/{job_id}", headers=ADMIN).json()["state"]


def test_running_and_queued_jobs_can_be_cancelled_and_register_nothing(
    client, registry, slow_trainer
):
    running = client.post("/v1/jobs", json={"method": "rest_slow"}, headers=ADMIN).json()["id"]
    queued = client.post("/v1/jobs", json={"method": "rest_slow"}, headers=ADMIN).json()["id"]
    assert slow_trainer.started.wait(10)
    assert _state(client, running) == "running" and _state(client, queued) == "queued"

    answer = client.delete(f"/v1/jobs/{queued}", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "cancelled"
    answer = client.delete(f"/v1/jobs/{running}", headers=ADMIN)
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled"

    client.app.state.service.jobs.wait(running, timeout=10)
    assert registry.list_models("rest_slow") == []
    again = client.delete(f"/v1/jobs/{running}", headers=ADMIN)
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]
    assert client.delete("/v1/jobs/no-such-job", headers=ADMIN).status_code == 404
    assert client.delete(f"/v1/jobs/{queued}").status_code == 401


def test_a_full_queue_answers_429_with_a_retry_hint(client, registry, slow_trainer):
    jobs = client.app.state.service.jobs
    first = client.post("/v1/jobs", json={"method": "rest_slow"}, headers=ADMIN).json()["id"]
    assert slow_trainer.started.wait(10)
    for _ in range(jobs.max_queued):
        assert client.post("/v1/jobs", json={"method": "rest_slow"}, headers=ADMIN).is_success
    before = len(registry.list_jobs())
    refused = client.post("/v1/jobs", json={"method": "rest_slow"}, headers=ADMIN)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert f"{jobs.max_queued} jobs waiting" in refused.json()["error"]
    assert len(registry.list_jobs()) == before  # the refusal recorded nothing
    assert _state(client, first) == "running"


def test_the_body_is_not_read_before_the_key_is_checked(client, slow_trainer):
    # Invalid JSON and a missing key: the answer is about the key, not the body.
    answer = client.post("/v1/jobs", content=b"{" * 10_000, headers={"Content-Type": "x"})
    assert answer.status_code == 401
    deep = client.post("/v1/jobs", content=b"[" * 10_000, headers=ADMIN)
    assert deep.status_code == 422 and "the limit is 32 levels" in deep.json()["error"]


def test_shutdown_cancels_the_running_job_quickly_and_nothing_registers(registry, slow_trainer):
    runner = JobRunner(registry, max_queued=2)
    running = runner.submit("rest_slow", {"seconds": 60})
    waiting = runner.submit("rest_slow", {})
    assert slow_trainer.started.wait(10)
    started = time.monotonic()
    runner.shutdown(wait_s=5)
    assert time.monotonic() - started < 5
    for job in (running, waiting):
        assert registry.get_job(job.id).state == JobState.CANCELLED
        assert "shut down" in registry.get_job(job.id).message
    wait_until(lambda: not any(t.name == "job-worker" for t in threading.enumerate()), 5)
    assert registry.list_models("rest_slow") == []
    with pytest.raises(RuntimeError, match="shutting down"):
        runner.submit("rest_slow", {})
