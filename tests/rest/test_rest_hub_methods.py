"""Training-hub methods end to end: POST /v1/jobs → poll → artifact in the registry → predict.

Each method is started through the real REST server (uvicorn + httpx), polled
until it finishes, and its registered artifact is loaded back into the
method's inference object, which must predict on digits better than chance.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from rest_harness import ADMIN_KEY
from sklearn.datasets import load_digits
from support import wait_until

from server.training.catalog import get_trainer

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

#: small configs: each trains in seconds on digits
HUB_JOBS = {
    "zil": {"epochs": 2, "layer_sizes": [64, 32, 10]},
    "ff_snn": {"epochs": 2, "hidden_sizes": [64, 64], "time_steps": 4},
}


def _wait(http: httpx.Client, job_id: str, limit_s: float = 120) -> dict:
    def finished() -> dict | None:
        job = http.get(f"/v1/jobs/{job_id}", headers=ADMIN).json()
        return job if job["state"] in {"succeeded", "failed"} else None

    return wait_until(finished, timeout=limit_s, interval=0.1, what=f"job {job_id} finished")


@pytest.mark.parametrize("method", sorted(HUB_JOBS))
def test_hub_method_trains_through_jobs_and_lands_in_registry(live_server, registry, method):
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        created = http.post(
            "/v1/jobs", json={"method": method, "config": HUB_JOBS[method]}, headers=ADMIN
        )
        assert created.status_code == 202, created.text
        job = _wait(http, created.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["progress"] == 1.0 and job["log"]

    record = registry.get_model(method)
    assert record.method == method and record.version == 1
    payload = torch.load(
        io.BytesIO(registry.artifacts.read_bytes(record.artifact_sha256)), weights_only=False
    )
    assert payload["method"] == method
    predictor = get_trainer(method).load(payload["state"])
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    accuracy = float((np.asarray(predictor.predict(x)) == digits.target).mean())
    assert accuracy > 0.3, accuracy  # chance is 0.1


@pytest.mark.parametrize(
    ("method", "config", "message"),
    [
        ("zil", {"epochs": -1}, "epochs"),
        ("zil", {"layer_sizes": [64, 0, 10]}, "layer_sizes"),
        ("ff_snn", {"encoding": "morse"}, "encoding"),
        ("ff_snn", {"hidden_sizes": [-3]}, "hidden_sizes"),
        ("boolean_bp", {"task": "xor9"}, "unknown task"),
        ("st_rsbp", {"task": "rows", "time_steps": 20}, "divisible by 8"),
        ("lactose", {"boundaries": [0, 0.5, 0.5, 1]}, "leaves interval 1 empty"),
        ("lactose", {"boundaries": [0, 0.7, 0.3, 1]}, "strictly increasing"),
    ],
)
def test_bad_hub_configs_are_422(client, method, config, message):
    response = client.post("/v1/jobs", json={"method": method, "config": config}, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]
