"""bench/harness.py and bench/bare_app.py: the pieces the service benchmarks stand on."""

from __future__ import annotations

import os
import time

import pytest
import torch
from fastapi.testclient import TestClient

from bench import harness
from bench.bare_app import app as bare_app
from bench.service import infer_body
from shared.ood.registry import DETECTORS


def test_untrained_stand_in_has_the_default_size_and_every_threshold():
    bundle = harness.untrained_base_bundle()
    assert bundle.config.embed_dim == 128 and bundle.config.num_classes == 6
    assert set(bundle.thresholds) == set(DETECTORS)
    assert bundle.reference_features.shape == (600, 128)


def test_bare_ceiling_answers_logits_and_energy_for_a_batch():
    rows = torch.rand(3, 128).numpy()
    with TestClient(bare_app) as client:
        response = client.post("/v2/models/anything/infer", json=infer_body(rows))
    assert response.status_code == 200
    outputs = {out["name"]: out for out in response.json()["outputs"]}
    assert outputs["logits"]["shape"] == [3, 6] and outputs["ood_score"]["shape"] == [3]
    logits = torch.tensor(outputs["logits"]["data"]).reshape(3, 6)
    energy = -torch.logsumexp(logits, dim=1)
    assert torch.allclose(energy, torch.tensor(outputs["ood_score"]["data"]), atol=1e-5)


def test_cpu_seconds_counts_this_process_work():
    before = harness.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert harness.cpu_seconds(os.getpid()) - before >= 0.1
    assert harness.cpu_seconds(2**22 + 12345) == 0.0  # no such process


def test_missing_wrk_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(harness.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install wrk"):
        harness.run_wrk("http://127.0.0.1:1/", b"{}")
