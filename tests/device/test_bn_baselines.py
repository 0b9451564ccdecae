"""Baselines: no adaptation, test-time BN with batch statistics, and TENT."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from device_client.bn_baselines import Tent, bn_adapt, no_adaptation, prediction_entropy


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    return net.eval()


class TwoInputNet(nn.Module):
    """Stands in for the two-stream model: logits from two inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1))
        self.b = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x).flatten(1), self.b(y).flatten(1)], dim=1))


def test_no_adaptation_is_the_eval_model_and_frozen():
    net = _net()
    x = torch.randn(5, 2, 6, 6)
    frozen = no_adaptation(net)
    torch.testing.assert_close(frozen(x), net.eval()(x))
    assert not any(p.requires_grad for p in frozen.parameters())
    assert any(p.requires_grad for p in net.parameters())  # the source model is not touched


def test_bn_adapt_normalises_with_the_batch_statistics():
    net = _net()
    x = torch.randn(16, 2, 6, 6) * 2 + 1
    adapted = bn_adapt(net)
    # Independent computation: normalise the conv output with its own batch mean / biased var.
    with torch.no_grad():
        h = net[0](x)
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        normed = (h - mean) / torch.sqrt(var + net[1].eps)
        normed = normed * net[1].weight[None, :, None, None] + net[1].bias[None, :, None, None]
        expected = net[6](net[5](net[4](torch.relu(normed))))
        torch.testing.assert_close(adapted(x), expected, rtol=1e-5, atol=1e-5)
    # Stateless: the same batch gives the same output again, and no running stats are stored.
    torch.testing.assert_close(adapted(x), adapted(x))
    assert adapted[1].running_mean is None
    assert torch.equal(net[1].running_mean, _net()[1].running_mean)


def test_bn_adapt_at_batch_size_one_uses_that_sample_alone():
    net = _net()
    x = torch.randn(4, 2, 6, 6)
    adapted = bn_adapt(net)
    one_by_one = torch.cat([adapted(x[i : i + 1]) for i in range(4)])
    assert not torch.allclose(one_by_one, adapted(x), atol=1e-4)


def test_entropy_matches_a_direct_formula():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    p = torch.softmax(logits, 1)
    torch.testing.assert_close(prediction_entropy(logits), -(p * p.log()).sum(1))
    assert prediction_entropy(logits)[0] == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_tent_first_step_is_adam_on_the_entropy_gradient_of_bn_affine_only():
    net = _net()
    x = torch.randn(8, 2, 6, 6)
    # Independent reference: gradient of mean entropy w.r.t. the BN affine with batch stats.
    reference = copy.deepcopy(net).train()
    reference[3].eval()  # dropout off, as in Tent
    logits = reference(x)
    loss = prediction_entropy(logits).mean()
    g_weight, g_bias = torch.autograd.grad(loss, [reference[1].weight, reference[1].bias])
    tent = Tent(net, lr=1e-3, steps=1)
    out = tent(x)
    torch.testing.assert_close(out, logits.detach(), rtol=1e-5, atol=1e-6)
    # Adam's first step is lr * g / (|g| + eps) (bias corrections cancel).
    for new, old, grad in [
        (tent.model[1].weight, net[1].weight, g_weight),
        (tent.model[1].bias, net[1].bias, g_bias),
    ]:
        expected = old - 1e-3 * grad / (grad.abs() + 1e-8)
        torch.testing.assert_close(new.detach(), expected.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(tent.model[0].weight, net[0].weight)  # conv untouched
    torch.testing.assert_close(tent.model[6].weight, net[6].weight)


def test_tent_lowers_entropy_over_calls_and_reset_restores():
    net = _net()
    x = torch.randn(32, 2, 6, 6)
    tent = Tent(net, lr=1e-2, steps=1)
    first = prediction_entropy(tent(x)).mean()
    for _ in range(20):
        last = prediction_entropy(tent(x)).mean()
    assert last < first - 0.01
    tent.reset()
    torch.testing.assert_close(prediction_entropy(tent(x)).mean(), first)


def test_tent_and_bn_adapt_call_multi_input_models():
    model = TwoInputNet()
    x, y = torch.randn(4, 2, 5, 5), torch.randn(4, 1, 5, 5)
    assert bn_adapt(model)(x, y).shape == (4, 3)
    assert Tent(model, steps=2)(x, y).shape == (4, 3)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="no BatchNorm"):
        bn_adapt(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="no BatchNorm"):
        Tent(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="lr"):
        Tent(_net(), lr=0)
    with pytest.raises(ValueError, match="steps"):
        Tent(_net(), steps=0)
    with pytest.raises(TypeError, match="nn.Module"):
        no_adaptation("model")
    with pytest.raises(TypeError, match="input"):
        Tent(_net())()
