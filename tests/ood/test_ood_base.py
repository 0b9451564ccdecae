"""Interface checks: Evidence / LinearHead validation, the registry, fit/score contracts."""

import math

import pytest
import torch

from shared.ood import DETECTORS, Evidence, LinearHead, TempScaling, make_detector

ALL_NAMES = ["msp", "maxlogit", "energy", "gen", "temp_scaling"]
ALL_NAMES += ["mahalanobis", "knn", "vim", "react", "ash"]
FITTED_NAMES = ["temp_scaling", "mahalanobis", "knn", "vim", "react", "ash"]


def _toy(n: int = 40, dim: int = 8, classes: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(n, dim, generator=generator)
    labels = torch.arange(n) % classes
    head = LinearHead(torch.randn(classes, dim, generator=generator), torch.zeros(classes))
    return Evidence(features, head.logits(features)), labels, head


def test_evidence_rejects_bad_inputs():
    good = torch.zeros(3, 2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        Evidence([[0.0, 1.0]], good)
    with pytest.raises(TypeError, match="floating-point"):
        Evidence(torch.zeros(3, 2, dtype=torch.long), good)
    with pytest.raises(ValueError, match="2-D"):
        Evidence(torch.zeros(3), good)
    with pytest.raises(ValueError, match="2-D"):
        Evidence(good, torch.zeros(3, 2, 1))
    with pytest.raises(ValueError, match="same number of rows"):
        Evidence(torch.zeros(4, 2), good)
    with pytest.raises(ValueError, match="NaN or inf"):
        Evidence(torch.tensor([[0.0, math.nan]] * 3), good)
    with pytest.raises(ValueError, match="NaN or inf"):
        Evidence(good, torch.tensor([[0.0, math.inf]] * 3))
    with pytest.raises(ValueError, match="non-empty"):
        Evidence(torch.zeros(0, 2), torch.zeros(0, 2))


def test_linear_head_logits_and_validation():
    weight = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]])
    bias = torch.tensor([0.5, 0.0, -1.0])
    head = LinearHead(weight, bias)
    features = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    expected = [[1 + 2 + 0.5, -1.0, 3 + 0.5 - 1], [2 - 2 + 0.5, 1.0, 6 - 0.5 - 1]]
    assert torch.allclose(head.logits(features), torch.tensor(expected))
    with pytest.raises(ValueError, match="bias must have shape"):
        LinearHead(weight, torch.zeros(2))
    with pytest.raises(ValueError, match="head expects D=2"):
        head.logits(torch.zeros(2, 3))


def test_registry_names_and_factories():
    assert sorted(DETECTORS) == sorted(ALL_NAMES)
    for name in ALL_NAMES:
        detector = make_detector(name)
        assert detector.name == name
        assert detector is not make_detector(name)


def test_make_detector_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown detector 'odin'.*energy.*msp"):
        make_detector("odin")


def test_make_detector_passes_kwargs():
    assert make_detector("energy", temperature=2.0).temperature == 2.0
    assert make_detector("knn", k=3).k == 3
    with pytest.raises(ValueError, match="temperature must be > 0"):
        make_detector("energy", temperature=0.0)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_fit_returns_self_and_score_shape(name):
    train, labels, head = _toy()
    detector = make_detector(name)
    assert detector.fit(train, labels, head) is detector
    test, _, _ = _toy(n=7, seed=1)
    scores = detector.score(test)
    assert scores.shape == (7,)
    assert scores.is_floating_point()
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", FITTED_NAMES)
def test_score_before_fit_raises_runtime_error(name):
    evidence, _, _ = _toy()
    with pytest.raises(RuntimeError, match="before fit"):
        make_detector(name).score(evidence)


def test_fixed_temperature_needs_no_fit():
    evidence, _, _ = _toy()
    assert TempScaling(temperature=1000.0).score(evidence).shape == (40,)


@pytest.mark.parametrize("name", ["vim", "react", "ash"])
def test_fit_without_head_raises(name):
    evidence, labels, _ = _toy()
    with pytest.raises(ValueError, match="head"):
        make_detector(name).fit(evidence, labels)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_fit_rejects_bad_labels(name):
    evidence, labels, head = _toy()
    with pytest.raises(ValueError, match="labels has 39 entries"):
        make_detector(name).fit(evidence, labels[:-1], head)
    with pytest.raises(TypeError, match="integer"):
        make_detector(name).fit(evidence, labels.float(), head)


@pytest.mark.parametrize("name", ["mahalanobis", "knn", "vim", "react", "ash"])
def test_score_rejects_other_feature_dim(name):
    evidence, labels, head = _toy()
    detector = make_detector(name).fit(evidence, labels, head)
    other = Evidence(torch.rand(5, 9), torch.rand(5, 3))
    with pytest.raises(ValueError, match="D="):
        detector.score(other)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_score_rejects_non_evidence(name):
    train, labels, head = _toy()
    detector = make_detector(name).fit(train, labels, head)
    with pytest.raises(TypeError, match="expected an Evidence"):
        detector.score(train.logits)
