"""device_client.measure and ``secdood-device bench`` (tiny untrained models, small clip set)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support import make_tiny_bundle

from device_client import measure
from device_client.cli import main
from server.export import int8_payload
from shared.data.digit_actions import DigitActionsConfig, generate_split
from shared.models.checkpoint import save_bundle
from shared.models.int8 import int8_payload_to_bytes

SMALL = DigitActionsConfig(train_per_class=1, val_per_class=1, test_per_class=4,
                           ood_per_action=1, far_count=3)  # fmt: skip


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    bundle = make_tiny_bundle(2)
    rgb, flow = torch.rand(6, 8, 3, 32, 32), torch.randn(6, 7, 2, 32, 32) * 0.3
    float_path = save_bundle(bundle, folder / "float.pt")
    int8_path = folder / "int8.pt"
    int8_path.write_bytes(int8_payload_to_bytes(int8_payload(bundle, rgb, flow)))
    return float_path, int8_path


@pytest.fixture
def small_clips(monkeypatch):
    clips = generate_split("test", SMALL)
    monkeypatch.setattr(measure, "load_split", lambda split: clips)
    return clips


def test_correct_per_clip_does_not_depend_on_the_batch_size(model_files, small_clips):
    model = measure.load_model(model_files[0]).model
    rgb, flow, labels = measure.clip_tensors(small_clips)
    one = measure.correct_per_clip(model, rgb, flow, labels, 1)
    assert one.shape == (len(small_clips),) and one.dtype == bool
    np.testing.assert_array_equal(one, measure.correct_per_clip(model, rgb, flow, labels, 5))
    assert measure.error_rate(model, rgb, flow, labels) == pytest.approx(1.0 - one.mean())


def test_device_bench_command_measures_float_int8_and_leantta(
    model_files, small_clips, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("SECDOOD_DEVICE_DIR", str(tmp_path / "state"))
    float_path, int8_path = model_files
    out = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--model", str(float_path), "--int8-model", str(int8_path)]
    assert main([*argv, "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    q = results["int8"]
    assert q["test_clips"] == len(small_clips)
    assert 0.0 <= q["accuracy_float"] <= 1.0 and 0.0 <= q["accuracy_int8"] <= 1.0
    assert q["artifact_bytes_int8"] < q["artifact_bytes_float"]
    assert set(results["leantta_latency_ms"]) == {
        "float_none",
        "float_leantta",
        "int8_none",
        "int8_leantta",
    }
    assert all(v > 0 for v in results["leantta_latency_ratio"].values())
    assert "LeanTTA latency ratio" in capsys.readouterr().out


def test_device_bench_without_models_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SECDOOD_DEVICE_DIR", str(tmp_path / "state"))
    assert main(["bench", "--quick", "--out", str(tmp_path / "x.json")]) == 2
    assert "download --variant float" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
