"""Open Inference Protocol routes, through a real uvicorn server (httpx, tritonclient)
and, for the many error cases, the in-process TestClient."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
from rest_harness import ADMIN, SCORING

from server.rest import create_app
from shared.pipeline import OODPipeline

INFER = "/v2/models/secdood_base/infer"


def features_request(features: np.ndarray, **extra) -> dict:
    return {
        "inputs": [
            {
                "name": "features",
                "shape": list(features.shape),
                "datatype": "FP32",
                "data": features.ravel().tolist(),
            }
        ],
        **extra,
    }


def expected_from_head(bundle, features: np.ndarray) -> dict:
    """Logits, energy scores, labels and verdicts computed directly from the head weights."""
    head = bundle.model.fused_head
    logits = torch.from_numpy(features) @ head.weight.detach().T + head.bias.detach()
    energy = -torch.logsumexp(logits, dim=1)
    threshold = bundle.thresholds["energy"]
    return {
        "logits": logits.numpy(),
        "ood_score": energy.numpy(),
        "is_ood": (energy > threshold).numpy(),
        "label": [bundle.classes[i] for i in logits.argmax(1).tolist()],
        "threshold": threshold,
    }


def outputs_by_name(body: dict) -> dict:
    return {output["name"]: output for output in body["outputs"]}


def test_health_and_readiness_follow_model_loading(unready_state, serve):
    server = serve(create_app(unready_state))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/v2/health/live").status_code == 200
        not_ready = http.get("/v2/health/ready")
        assert not_ready.status_code == 503
        assert not_ready.json() == {"ready": False}
        model_ready = http.get("/v2/models/secdood_base/ready")
        assert model_ready.status_code == 503
        assert "not loaded" in model_ready.json()["error"]
        infer = http.post(
            INFER, json=features_request(np.zeros((1, 8), np.float32)), headers=SCORING
        )
        assert infer.status_code == 503
        assert infer.headers["retry-after"].isdigit()

        unready_state.load_model()
        assert http.get("/v2/health/ready").json() == {"ready": True}
        assert http.get("/v2/models/secdood_base/ready").status_code == 200
        assert http.get("/v2/models/secdood_base/versions/1/ready").status_code == 200
        assert http.get("/v2/models/secdood_base/versions/2/ready").status_code == 404
        assert http.get("/v2/models/nonexistent/ready").status_code == 404


def test_server_and_model_metadata(live_server, tiny_bundle):
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        server = http.get("/v2").json()
        assert server["name"] == "secdood"
        assert isinstance(server["version"], str) and server["version"]
        assert isinstance(server["extensions"], list)

        meta = http.get("/v2/models/secdood_base", headers=SCORING).json()
    config = tiny_bundle.config
    assert meta["name"] == "secdood_base"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "pytorch"
    assert meta["inputs"] == [
        {"name": "features", "datatype": "FP32", "shape": [-1, config.embed_dim]},
        {
            "name": "clip",
            "datatype": "FP32",
            "shape": [-1, config.n_frames, 3, config.size, config.size],
        },
    ]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outputs == {
        "logits": ("FP32", [-1, len(tiny_bundle.classes)]),
        "ood_score": ("FP32", [-1]),
        "is_ood": ("BOOL", [-1]),
        "label": ("BYTES", [-1]),
    }


def test_infer_features_matches_the_head_and_energy(live_server, tiny_bundle):
    rng = np.random.default_rng(0)
    features = rng.random((5, 8), dtype=np.float32) * 3
    expected = expected_from_head(tiny_bundle, features)
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        response = http.post(INFER, json=features_request(features, id="req-42"), headers=SCORING)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "secdood_base"
    assert body["model_version"] == "1"
    assert body["id"] == "req-42"
    assert body["parameters"]["detector"] == "energy"
    assert body["parameters"]["threshold"] == pytest.approx(expected["threshold"])
    outputs = outputs_by_name(body)
    assert outputs["logits"]["shape"] == [5, 3] and outputs["logits"]["datatype"] == "FP32"
    np.testing.assert_allclose(
        np.reshape(outputs["logits"]["data"], (5, 3)), expected["logits"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(outputs["ood_score"]["data"], expected["ood_score"], rtol=1e-5)
    assert outputs["is_ood"]["datatype"] == "BOOL"
    assert outputs["is_ood"]["data"] == expected["is_ood"].tolist()
    assert outputs["label"]["datatype"] == "BYTES"
    assert outputs["label"]["data"] == expected["label"]


def test_infer_nested_data_selected_outputs_and_other_detector(client, tiny_bundle):
    features = np.linspace(0, 2, 16, dtype=np.float32).reshape(2, 8)
    request = features_request(features, parameters={"detector": "msp"})
    request["inputs"][0]["data"] = features.tolist()  # nested instead of flat
    request["outputs"] = [{"name": "ood_score"}, {"name": "label"}]
    response = client.post(INFER, json=request, headers=SCORING)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [output["name"] for output in body["outputs"]] == ["ood_score", "label"]
    head = tiny_bundle.model.fused_head
    logits = torch.from_numpy(features) @ head.weight.detach().T + head.bias.detach()
    msp = -torch.softmax(logits, dim=1).max(dim=1).values
    np.testing.assert_allclose(outputs_by_name(body)["ood_score"]["data"], msp.numpy(), rtol=1e-5)
    assert body["parameters"] == {"detector": "msp", "threshold": tiny_bundle.thresholds["msp"]}


def test_infer_clip_equals_pipeline_on_the_uint8_frames(live_server, tiny_bundle):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(2, 8, 32, 32, 3), dtype=np.uint8)
    clip = frames.transpose(0, 1, 4, 2, 3).astype(np.float32) / 255.0  # [N, T, 3, H, W]
    request = {
        "inputs": [
            {"name": "clip", "shape": list(clip.shape), "datatype": "FP32", "data": clip.tolist()}
        ]
    }
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        response = http.post(INFER, json=request, headers=SCORING)
    assert response.status_code == 200, response.text
    expected = OODPipeline(tiny_bundle).score_clips(frames)
    outputs = outputs_by_name(response.json())
    np.testing.assert_allclose(
        np.reshape(outputs["logits"]["data"], (2, 3)), expected.logits.numpy(), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(outputs["ood_score"]["data"], expected.ood_score.numpy(), rtol=1e-4)
    assert outputs["label"]["data"] == expected.labels


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_can_call_the_server(live_server, tiny_bundle, binary):
    http_client = pytest.importorskip("tritonclient.http")
    features = np.random.default_rng(2).random((3, 8), dtype=np.float32)
    expected = expected_from_head(tiny_bundle, features)
    client = http_client.InferenceServerClient(url=live_server.host_port)
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("secdood_base")
        metadata = client.get_model_metadata("secdood_base", headers=dict(SCORING))
        assert metadata["platform"] == "pytorch"
        tensor = http_client.InferInput("features", list(features.shape), "FP32")
        tensor.set_data_from_numpy(features, binary_data=binary)
        outputs = [
            http_client.InferRequestedOutput(name, binary_data=binary)
            for name in ("logits", "ood_score", "is_ood", "label")
        ]
        result = client.infer(
            # a copy: tritonclient writes its binary-extension header into the dict it gets
            "secdood_base",
            [tensor],
            outputs=outputs,
            headers=dict(SCORING),
            request_id="t-1",
        )
    finally:
        client.close()
    np.testing.assert_allclose(result.as_numpy("logits"), expected["logits"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("ood_score"), expected["ood_score"], rtol=1e-5)
    assert result.as_numpy("is_ood").tolist() == expected["is_ood"].tolist()
    labels = [
        label.decode() if isinstance(label, bytes) else label
        for label in result.as_numpy("label").tolist()
    ]
    assert labels == expected["label"]
    assert result.get_response()["id"] == "t-1"


def test_scoring_routes_need_a_key(client):
    request = features_request(np.zeros((1, 8), np.float32))
    missing = client.post(INFER, json=request)
    assert missing.status_code == 401
    assert "missing API key" in missing.json()["error"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = client.post(INFER, json=request, headers={"X-API-Key": "not-the-key"})
    assert wrong.status_code == 403
    assert wrong.json() == {"error": "invalid API key"}
    assert client.get("/v2/models/secdood_base").status_code == 401
    assert client.post(INFER, json=request, headers=ADMIN).status_code == 200  # admin can score
    assert client.post(INFER, json=request, headers=SCORING).status_code == 200


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        (
            {
                "inputs": [
                    {"name": "features", "shape": [1, 8], "datatype": "INT32", "data": [1] * 8}
                ]
            },
            "must have datatype FP32, got 'INT32'",
        ),
        (
            {
                "inputs": [
                    {"name": "features", "shape": [2, 8], "datatype": "FP32", "data": [0.0] * 8}
                ]
            },
            "declares shape [2, 8] (16 values) but its data has shape [8] (8 values)",
        ),
        (
            {
                "inputs": [
                    {"name": "features", "shape": [1, 5], "datatype": "FP32", "data": [0.0] * 5}
                ]
            },
            "must have shape [N, 8], got [1, 5]",
        ),
        (
            {"inputs": [{"name": "features", "shape": [0, 8], "datatype": "FP32", "data": []}]},
            "at least one row",
        ),
        (
            {
                "inputs": [
                    {"name": "pixels", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}
                ]
            },
            "exactly one input, named 'features'",
        ),
        (
            {
                "inputs": [
                    {"name": "features", "shape": [1, 8], "datatype": "FP32", "data": ["a"] * 8}
                ]
            },
            "must contain only numbers",
        ),
        (
            {"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32"}]},
            "has no 'data'",
        ),
        (
            {"inputs": [{"name": "features", "shape": [-1, 8], "datatype": "FP32", "data": [0]}]},
            "invalid inference request: inputs.0.shape.0",
        ),
        ({"inputs": []}, "invalid inference request: inputs"),
        (
            {
                "inputs": [
                    {"name": "features", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}
                ],
                "parameters": {"detector": "oracle"},
            },
            "unknown detector 'oracle'",
        ),
        (
            {
                "inputs": [
                    {"name": "features", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}
                ],
                "outputs": [{"name": "embedding"}],
            },
            "unknown outputs ['embedding']",
        ),
        (
            {
                "inputs": [
                    {"name": "clip", "shape": [1, 8, 3, 16, 16], "datatype": "FP32", "data": [0.0]}
                ]
            },
            "declares shape",
        ),
    ],
    ids=[
        "int32",
        "shape-data-mismatch",
        "wrong-dim",
        "empty-batch",
        "unknown-input",
        "text-data",
        "no-data",
        "negative-shape",
        "no-inputs",
        "unknown-detector",
        "unknown-output",
        "clip-size",
    ],
)
def test_bad_infer_requests_are_400_with_a_message(client, request_body, message):
    response = client.post(INFER, json=request_body, headers=SCORING)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def test_clip_with_wrong_frame_size_and_out_of_range_values(client):
    small = np.zeros((1, 8, 3, 16, 16), np.float32)
    request = {"inputs": [{"name": "clip", "shape": list(small.shape), "datatype": "FP32"}]}
    request["inputs"][0]["data"] = small.ravel().tolist()
    response = client.post(INFER, json=request, headers=SCORING)
    assert response.status_code == 400
    assert "must have shape [N, 8, 3, 32, 32]" in response.json()["error"]

    bright = np.full((1, 8, 3, 32, 32), 2.0, np.float32)
    request["inputs"][0].update(shape=list(bright.shape), data=bright.ravel().tolist())
    response = client.post(INFER, json=request, headers=SCORING)
    assert response.status_code == 400
    assert "values must lie in [0, 1]" in response.json()["error"]


def test_nan_malformed_json_and_unknown_model(client):
    body = '{"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", '
    nan_body = body + '"data": [NaN, 0, 0, 0, 0, 0, 0, 0]}]}'
    headers = {**SCORING, "Content-Type": "application/json"}
    response = client.post(INFER, content=nan_body, headers=headers)
    assert response.status_code == 400
    assert "NaN or infinite" in response.json()["error"]

    response = client.post(INFER, content=body, headers=headers)  # truncated JSON
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]

    request = features_request(np.zeros((1, 8), np.float32))
    response = client.post("/v2/models/resnet50/infer", json=request, headers=SCORING)
    assert response.status_code == 404
    assert response.json() == {"error": "unknown model 'resnet50'; try 'secdood_base'"}
    response = client.post(
        "/v2/models/secdood_base/versions/7/infer", json=request, headers=SCORING
    )
    assert response.status_code == 404
    assert "version '7' is not served" in response.json()["error"]


def test_binary_data_size_must_match_the_shape(client):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [2, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 64},
                }
            ]
        }
    ).encode()
    headers = {**SCORING, "Inference-Header-Content-Length": str(len(header))}
    short = header.replace(b"64", b"32") + np.zeros(8, "<f4").tobytes()  # 32 bytes, not 64
    response = client.post(
        INFER,
        content=short,
        headers={**headers, "Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400
    assert "needs 64 bytes of FP32 binary data, got binary_data_size=32" in response.json()["error"]

    extra = header + np.zeros(17, "<f4").tobytes()  # one float more than any input claims
    response = client.post(INFER, content=extra, headers=headers)
    assert response.status_code == 400
    assert "4 bytes of binary data that no input claims" in response.json()["error"]

    exact = header + np.arange(16, dtype="<f4").tobytes()
    response = client.post(INFER, content=exact, headers=headers)
    assert response.status_code == 200, response.text
