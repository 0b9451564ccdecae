"""End-to-end sanity: on well-separated synthetic clusters every detector finds far OOD."""

import pytest
import torch

from shared.ood import DETECTORS, Evidence, LinearHead, make_detector, ood_metrics

NUM_CLASSES, BLOCK = 4, 8
DIM = NUM_CLASSES * BLOCK


def _clusters(per_class: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative (post-ReLU-like) features; class c is active on its own block of dims."""
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    means = torch.full((NUM_CLASSES, DIM), 0.3)
    for c in range(NUM_CLASSES):
        means[c, c * BLOCK : (c + 1) * BLOCK] = 3.0
    noise = 0.5 * torch.randn(len(labels), DIM, generator=generator)
    return (means[labels] + noise).clamp(min=0), labels


@pytest.fixture(scope="module")
def setting():
    generator = torch.Generator().manual_seed(0)
    train_z, train_y = _clusters(100, generator)
    test_z, _ = _clusters(50, generator)
    # Gaussian-posterior head for unit covariance: logit_c = μ_c·z - ||μ_c||²/2.
    means = torch.stack([train_z[train_y == c].mean(0) for c in range(NUM_CLASSES)])
    head = LinearHead(means, -(means**2).sum(1) / 2)
    # Low-activation OOD: near the origin, ~10 units from every class mean.
    weak_z = (0.3 * torch.randn(200, DIM, generator=generator)).abs()
    # Large-norm OOD in a new direction: far from every cluster, but a linear head
    # extrapolates confidently there, so only feature-space detectors are expected to see it.
    direction = torch.randn(DIM, generator=generator).abs()
    strong_z = 30 * direction / direction.norm() + 0.5 * torch.randn(200, DIM, generator=generator)

    def evidence(z: torch.Tensor) -> Evidence:
        return Evidence(z, head.logits(z))

    return evidence(train_z), train_y, head, evidence(test_z), evidence(weak_z), evidence(strong_z)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_separates_far_low_activation_ood(setting, name):
    train, labels, head, test, weak, _ = setting
    detector = make_detector(name).fit(train, labels, head)
    assert ood_metrics(detector.score(test), detector.score(weak))["auroc"] > 0.9


@pytest.mark.parametrize("name", ["mahalanobis", "knn", "vim"])
def test_feature_detectors_separate_far_large_norm_ood(setting, name):
    train, labels, head, test, _, strong = setting
    detector = make_detector(name).fit(train, labels, head)
    assert ood_metrics(detector.score(test), detector.score(strong))["auroc"] > 0.9
