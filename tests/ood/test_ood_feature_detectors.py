"""Feature detectors (Mahalanobis, KNN, ViM) against independent numpy / scipy computations."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from shared.ood import KNN, Evidence, LinearHead, Mahalanobis, ViM, default_principal_dim


def _evidence(features: np.ndarray, num_classes: int = 2) -> Evidence:
    features_t = torch.tensor(features, dtype=torch.float64)
    return Evidence(features_t, torch.zeros(len(features), num_classes, dtype=torch.float64))


def _pooled_covariance(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Shared covariance as the count-weighted mean of per-class biased covariances."""
    total = np.zeros((features.shape[1], features.shape[1]))
    for c in np.unique(labels):
        members = features[labels == c]
        total += len(members) * np.cov(members, rowvar=False, bias=True)
    return total / len(features)


@pytest.mark.parametrize("ridge", [0.0, 1e-2])
def test_mahalanobis_matches_scipy_on_2d_example(ridge):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    means = np.array([[0.0, 0.0], [4.0, 1.0], [-2.0, 5.0]])
    mixing = np.array([[1.0, 0.6], [0.0, 0.5]])
    features = means[labels] + rng.normal(size=(90, 2)) @ mixing
    queries = rng.normal(0, 4, size=(12, 2))

    covariance = _pooled_covariance(features, labels)
    covariance += ridge * np.trace(covariance) / 2 * np.eye(2)
    inverse = np.linalg.inv(covariance)
    class_means = [features[labels == c].mean(0) for c in range(3)]
    expected = [min(scipy_mahalanobis(q, m, inverse) for m in class_means) for q in queries]

    detector = Mahalanobis(ridge=ridge).fit(_evidence(features, 3), torch.tensor(labels))
    scores = detector.score(_evidence(queries, 3))
    assert scores.tolist() == pytest.approx(expected, rel=1e-9)


def test_mahalanobis_is_invariant_to_invertible_linear_maps():
    # Mahalanobis distances do not change under z → A z (A invertible); Euclidean ones do.
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 50)
    features = rng.normal(size=(100, 4)) + 3 * labels[:, None]
    queries = rng.normal(size=(10, 4))
    transform = rng.normal(size=(4, 4)) + 3 * np.eye(4)
    plain = Mahalanobis(ridge=0.0).fit(_evidence(features), torch.tensor(labels))
    mapped = Mahalanobis(ridge=0.0).fit(_evidence(features @ transform.T), torch.tensor(labels))
    assert torch.allclose(
        plain.score(_evidence(queries)), mapped.score(_evidence(queries @ transform.T))
    )


def test_mahalanobis_handles_rank_deficient_features_with_ridge():
    rng = np.random.default_rng(2)
    features = np.zeros((20, 5))
    features[:, :2] = rng.normal(size=(20, 2))  # three dead channels
    labels = torch.tensor(np.arange(20) % 2)
    scores = Mahalanobis().fit(_evidence(features), labels).score(_evidence(features))
    assert torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="ridge"):
        Mahalanobis(ridge=-1.0)


def _knn_brute_force(bank: np.ndarray, queries: np.ndarray, k: int) -> list[float]:
    result = []
    for query in queries:
        distances = []
        for row in bank:
            cosine = float(query @ row) / (np.linalg.norm(query) * np.linalg.norm(row))
            distances.append(1.0 - cosine)
        result.append(sorted(distances)[k - 1])
    return result


@pytest.mark.parametrize(("k", "query_chunk", "bank_chunk"), [(10, 1024, 16384), (3, 4, 7)])
def test_knn_matches_brute_force_loop(k, query_chunk, bank_chunk):
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(53, 6))
    queries = rng.normal(size=(11, 6))
    detector = KNN(k=k, query_chunk=query_chunk, bank_chunk=bank_chunk)
    detector.fit(_evidence(bank), torch.zeros(53, dtype=torch.long))
    scores = detector.score(_evidence(queries))
    assert scores.tolist() == pytest.approx(_knn_brute_force(bank, queries, k), abs=1e-12)


def test_knn_nearest_neighbour_of_a_training_point_is_itself():
    rng = np.random.default_rng(4)
    bank = rng.normal(size=(30, 5))
    detector = KNN(k=1).fit(_evidence(bank), torch.zeros(30, dtype=torch.long))
    # A rescaled copy has cosine distance 0 to its original.
    assert detector.score(_evidence(3.0 * bank[:5])).abs().max() < 1e-12


def test_knn_rejects_too_few_training_samples_and_bad_k():
    with pytest.raises(ValueError, match="at least k=10"):
        KNN().fit(_evidence(np.ones((4, 3))), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be >= 1"):
        KNN(k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        KNN(k=2.0)


def _vim_numpy(train_z, train_logits, weight, bias, test_z, test_logits, dim):
    """ViM re-derived in numpy, following the paper's steps."""
    origin = -np.linalg.pinv(weight) @ bias
    centred = train_z - origin
    # The paper's covariance is about the origin u (not the data mean): E[(z-u)(z-u)ᵀ].
    second_moment = centred.T @ centred / len(centred)
    eigenvalues, eigenvectors = np.linalg.eigh(second_moment)
    principal = eigenvectors[:, np.argsort(eigenvalues)[::-1][:dim]]

    def residual(z):
        offset = z - origin
        return np.linalg.norm(offset - offset @ principal @ principal.T, axis=1)

    alpha = train_logits.max(1).mean() / residual(train_z).mean()
    log_sum_exp = np.log(np.exp(test_logits).sum(1))
    return alpha * residual(test_z) - log_sum_exp, alpha


@pytest.mark.parametrize("dim", [None, 2, 5])
def test_vim_matches_numpy_rederivation(dim):
    rng = np.random.default_rng(5)
    weight = rng.normal(size=(3, 8))
    bias = rng.normal(size=3)
    train_z = rng.normal(size=(60, 8)) * np.linspace(3, 0.5, 8)
    test_z = rng.normal(size=(9, 8)) * 2
    train_logits, test_logits = train_z @ weight.T + bias, test_z @ weight.T + bias
    head = LinearHead(torch.tensor(weight), torch.tensor(bias))
    detector = ViM(principal_dim=dim).fit(
        Evidence(torch.tensor(train_z), torch.tensor(train_logits)),
        torch.zeros(60, dtype=torch.long),
        head,
    )
    expected, alpha = _vim_numpy(
        train_z, train_logits, weight, bias, test_z, test_logits, 4 if dim is None else dim
    )
    scores = detector.score(Evidence(torch.tensor(test_z), torch.tensor(test_logits)))
    assert detector.alpha_ == pytest.approx(alpha, rel=1e-9)
    assert scores.tolist() == pytest.approx(expected.tolist(), rel=1e-8)


def test_vim_origin_maps_to_zero_logits():
    rng = np.random.default_rng(6)
    weight, bias = rng.normal(size=(3, 6)), rng.normal(size=3)
    train_z = rng.normal(size=(40, 6))
    head = LinearHead(torch.tensor(weight), torch.tensor(bias))
    train = Evidence(torch.tensor(train_z), head.logits(torch.tensor(train_z)))
    detector = ViM().fit(train, torch.zeros(40, dtype=torch.long), head)
    assert np.allclose(weight @ detector.origin_.numpy() + bias, 0.0)


def test_vim_rejects_bad_principal_dim():
    evidence = Evidence(torch.rand(10, 4), torch.rand(10, 2))
    head = LinearHead(torch.rand(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="1 <= dim < D=4"):
        ViM(principal_dim=4).fit(evidence, torch.zeros(10, dtype=torch.long), head)
    with pytest.raises(ValueError, match=">= 1"):
        ViM(principal_dim=0)


def test_default_principal_dim_follows_paper():
    assert default_principal_dim(2048) == 1000
    assert default_principal_dim(768) == 512
    assert default_principal_dim(128) == 64
    assert default_principal_dim(7) == 3
