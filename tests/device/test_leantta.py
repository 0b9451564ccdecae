"""LeanTTA: per-sample formula, statelessness, int8 stats, BN folding and a shift benchmark."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from device_client.bn_baselines import bn_adapt, no_adaptation
from shared.models.leantta import (
    LeanTTANorm,
    apply_leantta,
    batchnorm_names,
    fold_batchnorm,
    integer_stats,
)


def _trained_looking_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int = 0):
    """Give ``bn`` non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        if bn.affine:
            bn.weight.copy_(torch.randn(c, generator=g))
            bn.bias.copy_(torch.randn(c, generator=g))
    return bn.eval()


def _reference_leantta(x: np.ndarray, bn, tau: float, lam: float) -> np.ndarray:
    """The LeanTTA recipe written out sample by sample, channel by channel, in float64 numpy."""
    mu_s = bn.running_mean.double().numpy()
    var_s = bn.running_var.double().numpy()
    gamma = bn.weight.double().detach().numpy()
    beta = bn.bias.double().detach().numpy()
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        flat = x[n].reshape(x.shape[1], -1)
        mu_t, var_t = flat.mean(axis=1), flat.var(axis=1)
        mu_b = tau * mu_s + (1 - tau) * mu_t
        var_b = tau * var_s + (1 - tau) * var_t
        m = np.sum((mu_b - mu_s) ** 2 / (var_s + 1e-6))
        w = lam * (1 - np.exp(-m))
        mu = w * mu_s + (1 - w) * mu_b
        var = w * var_s + (1 - w) * var_b
        for c in range(x.shape[1]):
            out[n, c] = (x[n, c] - mu[c]) / np.sqrt(var[c] + bn.eps) * gamma[c] + beta[c]
    return out


@pytest.mark.parametrize(
    ("bn_cls", "shape"),
    [
        (nn.BatchNorm1d, (3, 4, 7)),
        (nn.BatchNorm2d, (3, 4, 5, 6)),
        (nn.BatchNorm3d, (2, 4, 3, 5, 5)),
    ],
)
def test_leantta_norm_matches_the_written_out_recipe(bn_cls, shape):
    bn = _trained_looking_bn(bn_cls(shape[1]))
    # A shifted, rescaled input so that target and source statistics differ.
    x = 1.5 * torch.randn(*shape, generator=torch.Generator().manual_seed(1)) + 0.3
    expected = _reference_leantta(x.double().numpy(), bn, tau=0.7, lam=0.8)
    got = LeanTTANorm(bn, tau=0.7, lam=0.8)(x)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_tau_one_reduces_to_the_source_batchnorm():
    bn = _trained_looking_bn(nn.BatchNorm2d(5))
    x = torch.randn(4, 5, 6, 6) * 3 + 2
    np.testing.assert_allclose(
        LeanTTANorm(bn, tau=1.0)(x).numpy(), bn(x).detach().numpy(), rtol=1e-5, atol=1e-5
    )


def test_stateless_batch_equals_separate_calls_and_source_is_untouched():
    bn = _trained_looking_bn(nn.BatchNorm2d(3))
    norm = LeanTTANorm(bn)
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    x = torch.randn(6, 3, 8, 8) * 2 - 1
    batched = norm(x)
    separate = torch.cat([norm(x[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(batched, separate, rtol=1e-6, atol=1e-6)
    # Order and repetition do not matter either: nothing carries over.
    torch.testing.assert_close(norm(x.flip(0)).flip(0), batched, rtol=1e-6, atol=1e-6)
    for key, value in norm.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(bn.running_mean, before["source_mean"])


def test_forward_is_backprop_free():
    norm = LeanTTANorm(_trained_looking_bn(nn.BatchNorm2d(3)))
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert not norm(x).requires_grad
    assert list(norm.parameters()) == []


def test_integer_stats_match_dequantised_float_stats():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-128, 128, (3, 4, 5, 5), generator=g, dtype=torch.int8)
    scale, zero_point = 0.037, -5
    mean, var = integer_stats(q, scale, zero_point)
    real = scale * (q.double() - zero_point)
    torch.testing.assert_close(mean.double(), real.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        var.double(), real.var(dim=(2, 3), unbiased=False), rtol=1e-5, atol=1e-6
    )


def test_quantised_input_gives_the_same_output_as_its_dequantised_float():
    bn = _trained_looking_bn(nn.BatchNorm2d(4))
    norm = LeanTTANorm(bn)
    x = torch.randn(3, 4, 6, 6) + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantised tensors are deprecated upstream
        q = torch.quantize_per_tensor(x, scale=0.02, zero_point=60, dtype=torch.quint8)
    torch.testing.assert_close(norm(q), norm(q.dequantize()), rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    bn = _trained_looking_bn(nn.BatchNorm2d(3))
    norm = LeanTTANorm(bn)
    with pytest.raises(ValueError, match="3 channels"):
        norm(torch.randn(2, 4, 5, 5))
    with pytest.raises(TypeError, match="float or quantised"):
        norm(torch.ones(2, 3, 5, 5, dtype=torch.int32))
    with pytest.raises(TypeError, match="BatchNorm"):
        LeanTTANorm(nn.LayerNorm(3))
    with pytest.raises(ValueError, match="tau"):
        LeanTTANorm(bn, tau=1.5)
    with pytest.raises(ValueError, match="track_running_stats"):
        LeanTTANorm(nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(TypeError, match="integer"):
        integer_stats(torch.randn(2, 3, 4), 0.1, 0)
    with pytest.raises(ValueError, match="scale"):
        integer_stats(torch.ones(2, 3, 4, dtype=torch.int8), 0.0, 0)


def _conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 6),
        nn.BatchNorm1d(6),
        nn.Linear(6, 3),
    )
    for i, bn in enumerate(
        m for m in net.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)
    ):
        _trained_looking_bn(bn, seed=i)
    return net.eval()


def test_apply_leantta_replaces_the_first_k_in_registration_order_on_a_copy():
    net = _conv_net()
    names = batchnorm_names(net)
    assert names == ["1", "3.1", "7"]
    adapted = apply_leantta(net, first_k=2)
    assert isinstance(adapted.get_submodule("1"), LeanTTANorm)
    assert isinstance(adapted.get_submodule("3.1"), LeanTTANorm)
    assert isinstance(adapted.get_submodule("7"), nn.BatchNorm1d)
    assert all(isinstance(net.get_submodule(n), nn.modules.batchnorm._BatchNorm) for n in names)
    assert not any(p.requires_grad for p in adapted.parameters())
    assert not adapted.training
    by_name = apply_leantta(net, names=["3.1"])
    assert isinstance(by_name.get_submodule("3.1"), LeanTTANorm)
    assert isinstance(by_name.get_submodule("1"), nn.BatchNorm2d)
    with pytest.raises(ValueError, match="first_k"):
        apply_leantta(net, first_k=4)
    with pytest.raises(ValueError, match="no BatchNorm"):
        apply_leantta(net, names=["2"])


def test_fold_batchnorm_equals_the_unfolded_model_for_all_layer_kinds():
    torch.manual_seed(0)
    branches = {
        "1d": (nn.Sequential(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), nn.ReLU()), (4, 3, 9)),
        "2d": (nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5)), (4, 3, 7, 7)),
        "3d": (nn.Sequential(nn.Conv3d(3, 5, 3, groups=1), nn.BatchNorm3d(5)), (2, 3, 4, 5, 5)),
        "lin": (nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU()), (4, 6)),
        "noaffine": (
            nn.Sequential(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(5, affine=False)),
            (2, 3, 4, 4),
        ),
    }
    for key, (net, shape) in branches.items():
        _trained_looking_bn(net[1], seed=len(key))
        net.eval()
        x = torch.randn(*shape)
        folded = fold_batchnorm(net)
        assert isinstance(folded[1], nn.Identity), key
        assert isinstance(net[1], nn.modules.batchnorm._BatchNorm), key  # original untouched
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5, msg=key)


def test_fold_respects_skip_and_leantta_layers():
    net = _conv_net()
    x = torch.randn(3, 2, 6, 6)
    folded = fold_batchnorm(net, skip=["7"])
    assert isinstance(folded.get_submodule("1"), nn.Identity)
    assert isinstance(folded.get_submodule("3.1"), nn.Identity)
    assert isinstance(folded.get_submodule("7"), nn.BatchNorm1d)
    torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)
    partial = apply_leantta(net, first_k=1, fold_remaining=True)
    assert isinstance(partial.get_submodule("1"), LeanTTANorm)
    assert isinstance(partial.get_submodule("3.1"), nn.Identity)
    torch.testing.assert_close(partial(x), apply_leantta(net, first_k=1)(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="skip"):
        fold_batchnorm(net, skip=["nonexistent"])


# --- shift benchmark -------------------------------------------------------------------------


def _stripes(
    n: int, generator: torch.Generator, size: int = 12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy horizontal / vertical / diagonal stripes with random phase; label = orientation."""
    labels = torch.randint(0, 3, (n,), generator=generator)
    grid = torch.arange(size, dtype=torch.float32)
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")
    phase = torch.rand(n, 1, 1, generator=generator) * 2 * torch.pi
    patterns = torch.stack([rows, cols, (rows + cols) / 2**0.5])[labels]  # (n, size, size)
    images = 0.5 * torch.sin(0.9 * patterns + phase) + 0.5 * torch.randn(
        n, size, size, generator=generator
    )
    return images[:, None], labels


def _error(model, images, labels, batch_size: int) -> float:
    with torch.no_grad():
        predictions = torch.cat(
            [model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)]
        )
    return float((predictions != labels).float().mean())


def test_leantta_beats_no_adaptation_under_a_brightness_shift_at_batch_size_one():
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    train_x, train_y = _stripes(2048, generator)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(4):
        for i in range(0, len(train_x), 64):
            loss = nn.functional.cross_entropy(net(train_x[i : i + 64]), train_y[i : i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    test_x, test_y = _stripes(512, generator)
    clean_error = _error(no_adaptation(net), test_x, test_y, 1)
    shifted = test_x + 0.5  # brightness shift: every first-layer channel mean moves
    errors = {
        "none": _error(no_adaptation(net), shifted, test_y, 1),
        "leantta": _error(apply_leantta(net), shifted, test_y, 1),
        "bn_adapt_1": _error(bn_adapt(net), shifted, test_y, 1),
        "bn_adapt_64": _error(bn_adapt(net), shifted, test_y, 64),
    }
    assert clean_error < 0.05, clean_error  # the tiny net did learn the task
    assert errors["none"] > clean_error + 0.05, errors  # and the shift does hurt it
    assert errors["leantta"] < errors["none"], errors
    # Test-time BN with one sample normalises away what the classifier needs: it collapses.
    assert errors["bn_adapt_1"] > errors["none"] + 0.3, errors
    assert errors["bn_adapt_64"] < errors["none"], errors  # with a real batch it adapts well
