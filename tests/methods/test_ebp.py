"""EBP: mean-field moments vs Monte Carlo, learning, sparse/dense equality, loader errors."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch
from pydantic import ValidationError

from server.training.ebp import (
    REFERENCE_PASSES,
    EBPConfig,
    bp_predict,
    init_ebp_network,
    select_bp_learning_rates,
    train_bp_epoch,
    train_bp_passes,
    train_ebp_epoch,
)
from shared.methods.ebp import EBPNetwork
from shared.methods.ebp_data import default_data_dir, load_ebp_task


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _random_network(sizes: list[int], seed: int) -> EBPNetwork:
    gen = torch.Generator().manual_seed(seed)
    fields = [
        torch.randn(o, i, generator=gen, dtype=torch.float64)
        for i, o in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    biases = [torch.randn(o, generator=gen, dtype=torch.float64) for o in sizes[1:]]
    return EBPNetwork(fields, biases)


def test_forward_moments_match_monte_carlo_of_binary_weights() -> None:
    """Sample w ∈ {±1} with P(+1) = (1 + tanh h)/2 plus the unit input noise the model assumes."""
    sizes, samples = [300, 16, 1], 4000
    net = _random_network(sizes, seed=0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, sizes[0], generator=gen, dtype=torch.float64)
    mean_us, var_us, _ = net.mean_field_forward(x)

    v = x.expand(samples, -1)
    for k, (m, b) in enumerate(zip(net.means, net.biases, strict=True)):
        p_plus = (1 + m) / 2
        draws = torch.rand((samples, *m.shape), generator=gen, dtype=torch.float64)
        w = torch.where(draws < p_plus, 1.0, -1.0).to(torch.float64)
        noise = torch.randn(samples, m.shape[0], generator=gen, dtype=torch.float64)
        u = (torch.einsum("soi,si->so", w, v) + b + noise) / math.sqrt(m.shape[1] + 1)
        mc_mean, mc_var = u.mean(0), u.var(0)
        sem = (mc_var / samples).sqrt()
        # Layer 0 is exact; layer 1 adds the CLT approximation of the hidden sign units.
        slack = 0.0 if k == 0 else 0.02
        assert torch.all((mc_mean - mean_us[k][0]).abs() <= 5 * sem + slack), k
        rel = (mc_var / var_us[k][0] - 1).abs()
        assert torch.all(rel <= 5 * math.sqrt(2 / samples) + 2 * slack), k
        v = torch.where(u >= 0, 1.0, -1.0).to(torch.float64)


def _separable_task(n: int, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=dims)
    x = rng.normal(size=(n, dims)).astype(np.float32)
    return x, np.where(x @ teacher >= 0, 1, -1)


def test_ebp_learns_separable_task_in_one_epoch() -> None:
    x, y = _separable_task(4000, 50, seed=0)
    net = init_ebp_network([50, 120, 1], seed=0)
    chance = max((y[3000:] == 1).mean(), (y[3000:] == -1).mean())
    train_ebp_epoch(net, x[:3000], y[:3000], batch_size=10, seed=0)
    assert (net.predict(x[3000:], "probabilistic") == y[3000:]).mean() > 0.93
    assert (net.predict(x[3000:], "deterministic") == y[3000:]).mean() > 0.8 > chance


def test_bp_baseline_learns_separable_task() -> None:
    x, y = _separable_task(4000, 50, seed=1)
    params = train_bp_epoch(x[:3000], y[:3000], hidden=120, lr=0.1, batch_size=10, seed=0)
    assert (bp_predict(params, x[3000:]) == y[3000:]).mean() > 0.9


def test_bp_passes_continue_the_one_pass_run_and_lrs_are_chosen_per_pass() -> None:
    x, y = _separable_task(600, 20, seed=2)
    one = train_bp_epoch(x, y, hidden=8, lr=0.05, batch_size=10, seed=0)
    passes = list(train_bp_passes(x, y, hidden=8, lr=0.05, batch_size=10, seed=0, passes=2))
    assert len(passes) == 2
    assert all(torch.equal(a, b) for a, b in zip(one, passes[0], strict=True))
    assert not torch.equal(passes[0][0], passes[1][0])
    best, errors = select_bp_learning_rates(x, y, hidden=8, batch_size=10, seed=0, passes=2)
    assert len(best) == 2 and len(errors) == 2 and len(errors[1]) == 8
    for chosen, errs in zip(best, errors, strict=True):
        assert errs[f"{chosen:.3g}"] == min(errs.values())
    assert EBPConfig().epochs == REFERENCE_PASSES == 3


def _sparse_task(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dense = (rng.random((300, 400)) < 0.02) * rng.integers(1, 4, size=(300, 400))
    return dense.astype(np.float32), np.where(rng.random(300) < 0.5, 1, -1)


def test_sparse_inputs_train_exactly_like_dense_ones() -> None:
    dense, y = _sparse_task(0)
    sparse = scipy.sparse.csr_matrix(dense)
    nets = [init_ebp_network([400, 12, 1], seed=3) for _ in range(2)]
    train_ebp_epoch(nets[0], dense, y, batch_size=10, seed=0)
    train_ebp_epoch(nets[1], sparse, y, batch_size=10, seed=0)
    for h_dense, h_sparse in zip(nets[0].fields, nets[1].fields, strict=True):
        torch.testing.assert_close(h_dense, h_sparse, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(nets[0].predict(dense), nets[1].predict(sparse))
    bp_dense = train_bp_epoch(dense, y, hidden=8, lr=0.05, batch_size=10, seed=0)
    bp_sparse = train_bp_epoch(sparse, y, hidden=8, lr=0.05, batch_size=10, seed=0)
    for a, b in zip(bp_dense, bp_sparse, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_deterministic_read_out_is_the_sign_network() -> None:
    net = _random_network([6, 4, 1], seed=2)
    x = torch.randn(5, 6, dtype=torch.float64)
    hidden = torch.sign(x @ torch.sign(net.fields[0]).T + net.biases[0])
    expected = torch.sign(hidden @ torch.sign(net.fields[1]).T + net.biases[1])[:, 0]
    np.testing.assert_array_equal(net.predict(x.numpy(), "deterministic"), expected.numpy())


def test_state_round_trips_through_torch_save() -> None:
    net = _random_network([7, 3, 1], seed=4)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    again = EBPNetwork.from_state(torch.load(buffer))
    x = np.random.default_rng(0).normal(size=(9, 7))
    for mode in ("probabilistic", "deterministic"):
        np.testing.assert_array_equal(net.predict(x, mode), again.predict(x, mode))


def test_bad_inputs_raise_clear_errors(tmp_path) -> None:
    net = _random_network([7, 3, 1], seed=4)
    with pytest.raises(ValueError, match="expected inputs"):
        net.predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="mode"):
        net.predict(np.zeros((2, 7)), "sampled")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one output unit"):
        init_ebp_network([7, 3, 2], seed=0)
    with pytest.raises(ValueError, match="unknown EBP task"):
        load_ebp_task("imdb")
    with pytest.raises(FileNotFoundError, match="SECDOOD_EBP_DATA"):
        load_ebp_task("20News_comp", data_dir=tmp_path)
    scipy.io.savemat(
        tmp_path / "reuters_I81_I83.mat", {"data": np.zeros((4, 3)), "labels": np.ones((5, 1))}
    )
    with pytest.raises(ValueError, match="labels"):
        load_ebp_task("reuters_I81_I83", data_dir=tmp_path)
    scipy.io.savemat(
        tmp_path / "reuters_I81_I83.mat", {"data": np.zeros((4, 3)), "labels": np.zeros((4, 1))}
    )
    with pytest.raises(ValueError, match="±1"):
        load_ebp_task("reuters_I81_I83", data_dir=tmp_path)
    with pytest.raises(ValidationError):
        EBPConfig(task="imdb")
    with pytest.raises(ValidationError):
        EBPConfig(test_fold=8)
    with pytest.raises(ValidationError):
        EBPConfig(hidden_units=0)
    with pytest.raises(ValidationError):
        EBPConfig(epochs=0)
    with pytest.raises(ValidationError):
        EBPConfig(learning_rate=0.1)


def test_loader_honours_environment_variable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SECDOOD_EBP_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    data = scipy.sparse.random(6, 4, density=0.5, format="csc", random_state=0)
    scipy.io.savemat(
        tmp_path / "apparel_dvd.mat", {"data": data, "labels": np.array([[1, -1] * 3]).T}
    )
    x, y = load_ebp_task("apparel_dvd")
    assert scipy.sparse.isspmatrix_csr(x) and x.dtype == np.float32 and x.shape == (6, 4)
    np.testing.assert_allclose(x.toarray(), data.toarray(), rtol=1e-6)
    np.testing.assert_array_equal(y, [1, -1] * 3)


def test_real_task_smoke() -> None:
    if not (default_data_dir() / "apparel_books.mat").is_file():
        pytest.skip("EBP data not present next to the checkout")
    x, y = load_ebp_task("apparel_books")
    assert x.shape == (3880, 221972) and set(np.unique(y)) == {-1, 1}
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1200], order[-500:]
    net = init_ebp_network([x.shape[1], 120, 1], seed=0)
    train_ebp_epoch(net, x[train], y[train], batch_size=10, seed=0)
    assert (net.predict(x[test], "probabilistic") != y[test]).mean() < 0.3
