"""``POST /v1/ood/score``: JSON features and clips, video uploads, size limits and errors."""

from __future__ import annotations

import tempfile

import httpx
import numpy as np
import pytest
import torch
from rest_harness import MAX_UPLOAD_BYTES, SCORING

from server.rest import create_app
from shared.data.video_io import iter_clips, write_video
from shared.ood.registry import DETECTORS
from shared.pipeline import OODPipeline

SCORE = "/v1/ood/score"


def head_energy(bundle, features: np.ndarray) -> tuple[np.ndarray, list[str]]:
    head = bundle.model.fused_head
    logits = torch.from_numpy(features) @ head.weight.detach().T + head.bias.detach()
    return (-torch.logsumexp(logits, 1)).numpy(), [bundle.classes[i] for i in logits.argmax(1)]


def test_one_feature_vector_gives_scalars_with_every_detector(live_server, tiny_bundle):
    features = np.random.default_rng(0).random((1, 8), dtype=np.float32)
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        response = http.post(SCORE, json={"features": features.tolist()}, headers=SCORING)
    assert response.status_code == 200, response.text
    body = response.json()
    energy, labels = head_energy(tiny_bundle, features)
    assert body["count"] == 1
    assert body["label"] == labels[0]
    assert body["ood_score"] == pytest.approx(float(energy[0]), rel=1e-5)
    assert body["threshold"] == pytest.approx(tiny_bundle.thresholds["energy"])
    assert body["is_ood"] is bool(energy[0] > tiny_bundle.thresholds["energy"])
    assert body["detector"] == "energy"
    assert set(body["scores"]) == set(DETECTORS)
    assert body["scores"]["energy"] == pytest.approx(body["ood_score"])


def test_a_batch_gives_lists_and_detectors_can_be_chosen(client, tiny_bundle):
    features = np.random.default_rng(1).random((4, 8), dtype=np.float32)
    request = {"features": features.tolist(), "detector": "maxlogit", "detectors": ["energy"]}
    response = client.post(SCORE, json=request, headers=SCORING)
    assert response.status_code == 200, response.text
    body = response.json()
    energy, labels = head_energy(tiny_bundle, features)
    head = tiny_bundle.model.fused_head
    max_logit = -(torch.from_numpy(features) @ head.weight.detach().T + head.bias).max(1).values
    assert body["count"] == 4
    assert body["label"] == labels
    np.testing.assert_allclose(body["ood_score"], max_logit.detach().numpy(), rtol=1e-5)
    assert set(body["scores"]) == {"maxlogit", "energy"}
    np.testing.assert_allclose(body["scores"]["energy"], energy, rtol=1e-5)


def test_single_clip_without_batch_axis(client, tiny_bundle):
    frames = np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    clip = frames.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # [T, 3, H, W]
    response = client.post(SCORE, json={"clip": clip.tolist()}, headers=SCORING)
    assert response.status_code == 200, response.text
    expected = OODPipeline(tiny_bundle).score_clips(frames[None])
    assert response.json()["ood_score"] == pytest.approx(float(expected.ood_score[0]), rel=1e-4)
    assert response.json()["label"] == expected.labels[0]


def test_uploaded_video_is_scored_clip_by_clip(live_server, tiny_bundle, tmp_path):
    rng = np.random.default_rng(3)
    video = write_video(tmp_path / "walk.mp4", rng.integers(0, 256, (20, 32, 32, 3), np.uint8))
    clips = np.stack(list(iter_clips(video, n_frames=8, size=32)))  # 2 clips, 4 frames dropped
    expected = OODPipeline(tiny_bundle).score_clips(clips, "energy")
    with httpx.Client(base_url=live_server.url, timeout=30) as http, video.open("rb") as handle:
        response = http.post(
            SCORE,
            files={"file": ("walk.mp4", handle, "video/mp4")},
            data={"detector": "energy"},
            headers=SCORING,
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["filename"] == "walk.mp4"
    assert body["count"] == len(clips) == 2
    assert [clip["start_frame"] for clip in body["clips"]] == [0, 8]
    np.testing.assert_allclose(
        [clip["ood_score"] for clip in body["clips"]], expected.ood_score.numpy(), rtol=1e-4
    )
    assert [clip["label"] for clip in body["clips"]] == expected.labels
    assert body["ood_count"] == int(expected.is_ood.sum())


def test_unreadable_and_oversized_uploads(live_server, tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where uploads are written
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        junk = http.post(
            SCORE,
            files={"file": ("junk.mp4", b"this is not a video", "video/mp4")},
            headers=SCORING,
        )
        assert junk.status_code == 422
        assert "cannot score 'junk.mp4'" in junk.json()["error"]

        no_file = http.post(SCORE, files={"other": ("a.mp4", b"x")}, headers=SCORING)
        assert no_file.status_code == 422
        assert "field 'file'" in no_file.json()["error"]

        huge = b"\0" * (MAX_UPLOAD_BYTES + 1)
        too_big = http.post(SCORE, files={"file": ("big.mp4", huge, "video/mp4")}, headers=SCORING)
        assert too_big.status_code == 413
        assert str(MAX_UPLOAD_BYTES) in too_big.json()["error"]

        def chunks():  # no Content-Length: the cap must bite while streaming
            for _ in range(MAX_UPLOAD_BYTES // 65536 + 2):
                yield b"\0" * 65536

        streamed = http.post(
            SCORE,
            content=chunks(),
            headers={**SCORING, "Content-Type": "application/json"},
        )
        assert streamed.status_code == 413
        assert "larger than the server's limit" in streamed.json()["error"]
    assert list(spool.iterdir()) == []  # no upload left behind


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({}, "give exactly one of 'features'"),
        ({"features": [[0.0] * 8], "clip": [[0.0]]}, "give exactly one of 'features'"),
        ({"features": [[0.0] * 7]}, "features must have shape [N, 8], got [1, 7]"),
        ({"features": [[0.0] * 8, [0.0] * 7]}, "rectangular"),
        ({"features": [[0.0] * 8], "detector": "oracle"}, "unknown detector 'oracle'"),
        ({"features": [[0.0] * 8], "detectors": ["energy", "x"]}, "unknown detector 'x'"),
        ({"features": [[0.0] * 8], "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"clip": [[[0.0]]]}, "clip must have shape [N, 8, 3, 32, 32]"),
        ({"features": "0,0,0"}, "invalid score request: features"),
    ],
)
def test_bad_json_requests_are_422(client, request_body, message):
    response = client.post(SCORE, json=request_body, headers=SCORING)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]


def test_nan_garbage_and_wrong_content_type(client):
    headers = {**SCORING, "Content-Type": "application/json"}
    nan = client.post(
        SCORE, content='{"features": [[Infinity, 0, 0, 0, 0, 0, 0, 0]]}', headers=headers
    )
    assert nan.status_code == 422
    assert "NaN or infinite" in nan.json()["error"]
    garbage = client.post(SCORE, content="{features: ", headers=headers)
    assert garbage.status_code == 422
    assert "not valid JSON" in garbage.json()["error"]
    text = client.post(SCORE, content="hello", headers={**SCORING, "Content-Type": "text/plain"})
    assert text.status_code == 415


def test_score_with_a_fresh_unloaded_server(unready_state, serve):
    server = serve(create_app(unready_state))
    response = httpx.post(
        f"{server.url}{SCORE}", json={"features": [[0.0] * 8]}, headers=SCORING, timeout=10
    )
    assert response.status_code == 503
    assert "no model is loaded yet" in response.json()["error"]
    assert response.headers["retry-after"]
