"""OODPipeline: the clip → verdict path on an untrained tiny model (plumbing, not accuracy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.ood.base import Evidence, LinearHead
from shared.ood.registry import make_detector
from shared.pipeline import OODPipeline


def test_scores_match_a_directly_fitted_detector(tiny_bundle):
    pipeline = OODPipeline(tiny_bundle)
    z = torch.rand(5, 8)
    verdicts = pipeline.score_features(z, detector="mahalanobis", extra_detectors=("msp",))
    head = LinearHead(tiny_bundle.model.fused_head.weight, tiny_bundle.model.fused_head.bias)
    logits = z @ head.weight.T + head.bias
    direct = make_detector("mahalanobis").fit(
        Evidence(tiny_bundle.reference_features, tiny_bundle.reference_logits),
        tiny_bundle.reference_labels,
        head,
    )
    torch.testing.assert_close(verdicts.ood_score, direct.score(Evidence(z, logits)))
    torch.testing.assert_close(verdicts.logits, logits)
    assert set(verdicts.scores) == {"mahalanobis", "msp"}
    threshold = tiny_bundle.thresholds["mahalanobis"]
    assert verdicts.threshold == pytest.approx(threshold)
    assert verdicts.is_ood.tolist() == (verdicts.ood_score > threshold).tolist()
    assert verdicts.labels == [tiny_bundle.classes[i] for i in logits.argmax(1).tolist()]


def test_personalised_logits_are_used_when_given(tiny_bundle):
    pipeline = OODPipeline(tiny_bundle)
    z = torch.rand(4, 8)
    logits = torch.tensor([[9.0, 0.0, 0.0]] * 4)
    verdicts = pipeline.score_features(z, detector="msp", logits=logits)
    assert verdicts.labels == ["a"] * 4
    torch.testing.assert_close(verdicts.ood_score, -torch.softmax(logits, 1).max(1).values)


def test_clip_scoring_end_to_end(tiny_bundle):
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 32, 32, 3), dtype=np.uint8)
    verdicts = OODPipeline(tiny_bundle).score_clips(frames)
    assert verdicts.features.shape == (3, 8)
    assert len(verdicts.labels) == 3


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (torch.rand(2, 7), r"\[N, 8\]"),
        (torch.rand(8), r"\[N, 8\]"),
        (torch.full((1, 8), float("nan")), "NaN"),
    ],
)
def test_bad_features_rejected(tiny_bundle, features, message):
    with pytest.raises(ValueError, match=message):
        OODPipeline(tiny_bundle).score_features(features)


def test_unknown_detector_rejected(tiny_bundle):
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        OODPipeline(tiny_bundle).score_features(torch.rand(1, 8), detector="nope")
