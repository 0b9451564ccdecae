"""H's affine folding, Θ layout and personalised logits against direct computations."""

from __future__ import annotations

import pytest
import torch
from support import make_hypernet

from shared.hypernet import (
    HyperNetwork,
    HyperNetworkConfig,
    hypernet_from_state,
    hypernet_state,
    personalised_logits,
    split_theta,
)


@pytest.mark.parametrize("variant", ["one_m", "two_m"])
def test_affine_map_equals_the_module(variant):
    model = make_hypernet(16, 4, variant)
    z = torch.rand(10, 16) * 3
    kernel, bias = model(z)
    a, c = model.affine_map()
    theta = z.double() @ a + c
    assert a.shape == (16, 16 * 4 + 4)
    assert torch.allclose(theta[:, :64].reshape(10, 16, 4), kernel.double(), atol=1e-5)
    assert torch.allclose(theta[:, 64:], bias.double(), atol=1e-5)


def test_masking_a_channel_equals_dropping_its_row():
    model = make_hypernet(12, 3)
    a, c = model.affine_map()
    z = torch.rand(12).double()
    keep = torch.tensor([1, 4, 5, 9])
    mask = torch.zeros(12, dtype=torch.double)
    mask[keep] = 1
    assert torch.allclose((z * mask) @ a + c, z[keep] @ a[keep] + c, atol=1e-12)


def test_affine_map_refuses_training_mode():
    model = make_hypernet(8, 2).train()
    with pytest.raises(RuntimeError, match="eval"):
        model.affine_map()


def test_init_from_head_reproduces_the_head_in_eval_mode():
    model = HyperNetwork(HyperNetworkConfig(6, 3))
    weight, bias = torch.randn(3, 6), torch.randn(3)
    model.init_from_head(weight, bias, spread=1e-9)
    model.eval()  # fresh running stats (0, 1): Θ ≈ β = the head
    z = torch.rand(5, 6)
    logits = personalised_logits(z, model.theta(z).detach(), 3)
    assert torch.allclose(logits, z @ weight.T + bias, atol=1e-5)
    with pytest.raises(ValueError, match="head must be"):
        model.init_from_head(weight.T, bias)


def test_personalised_logits_per_sample_and_shared_theta():
    z = torch.randn(4, 5)
    theta = torch.randn(4, 5 * 2 + 2)
    expected = torch.stack([z[i] @ theta[i, :10].reshape(5, 2) + theta[i, 10:] for i in range(4)])
    assert torch.allclose(personalised_logits(z, theta, 2), expected, atol=1e-6)
    shared = theta[0]
    assert torch.allclose(
        personalised_logits(z, shared, 2), z @ shared[:10].reshape(5, 2) + shared[10:]
    )
    with pytest.raises(ValueError, match="per-sample theta"):
        personalised_logits(z, theta[:3], 2)
    with pytest.raises(ValueError, match="D·C \\+ C"):
        split_theta(theta[:, :-1], 5, 2)


def test_config_and_input_validation():
    with pytest.raises(ValueError, match="variant"):
        HyperNetworkConfig(variant="three_m")
    with pytest.raises(ValueError, match="num_classes"):
        HyperNetworkConfig(num_classes=1)
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        make_hypernet(8, 2)(torch.rand(3, 7))


def test_state_round_trip_and_bad_state():
    model = make_hypernet(8, 3, "two_m")
    copy = hypernet_from_state(hypernet_state(model, "abc"))
    z = torch.rand(4, 8)
    assert torch.equal(copy.theta(z), model.theta(z))
    with pytest.raises(ValueError, match="not a SecDOOD hypernetwork"):
        hypernet_from_state({"format": "other"})
