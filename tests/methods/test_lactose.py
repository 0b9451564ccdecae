"""LACTOSE: exact boundaries, per-interval gradients, grouped batches, clear config errors."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from server.training.lactose import (
    TRAINER,
    LactoseConfig,
    build_model,
    reference_shaper,
)
from shared.methods.lactose import IntervalMLP, check_boundaries, interval_index


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_values_on_boundaries_go_to_the_interval_that_starts_there() -> None:
    b = check_boundaries([0.0, 0.25, 0.5, 1.0])
    c = torch.tensor([0.0, 0.2499, 0.25, 0.5, 0.75, 1.0])
    assert interval_index(c, b).tolist() == [0, 0, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="outside"):
        interval_index(torch.tensor([1.0001]), b)
    with pytest.raises(ValueError, match="NaN"):
        interval_index(torch.tensor([float("nan")]), b)


def test_bad_boundaries_are_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        check_boundaries([0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        check_boundaries([0.0, 0.7, 0.3, 1.0])
    with pytest.raises(ValueError, match="at least two"):
        check_boundaries([0.5])
    with pytest.raises(ValidationError, match="cover"):
        LactoseConfig(boundaries=[0.2, 0.5, 1.0])
    with pytest.raises(ValidationError, match="empty"):
        LactoseConfig(boundaries=[0.0, 0.5, 0.5, 1.0])


def test_grouped_batch_equals_one_sample_at_a_time_and_only_chosen_sets_learn() -> None:
    net = IntervalMLP([0.0, 1 / 3, 2 / 3, 1.0], [2, 8, 1], seed=0)
    c = torch.tensor([0.1, 2 / 3, 1 / 3, 0.2, 1.0])
    x = torch.stack([torch.linspace(-1, 1, 5), c], 1)
    batched = net(x, c)
    single = torch.cat([net(x[i : i + 1], c[i : i + 1]) for i in range(5)])
    assert torch.allclose(batched, single)
    only_first = torch.tensor([0.0, 0.1, 0.3])
    net(torch.stack([only_first, only_first], 1), only_first).sum().backward()
    grads = net.weights[0].grad
    assert grads[0].abs().sum() > 0
    assert grads[1].abs().sum() == 0 and grads[2].abs().sum() == 0


def test_baseline_matches_parameter_count_and_training_reduces_error() -> None:
    lactose = build_model(LactoseConfig())
    baseline = build_model(LactoseConfig(conditioned=False))
    n_l = sum(p.numel() for p in lactose.parameters())
    n_b = sum(p.numel() for p in baseline.parameters())
    assert abs(n_l - n_b) / n_l < 0.05
    result = TRAINER.train(LactoseConfig(steps=100, clips_per_step=8))
    model = TRAINER.load(result.state)
    x = torch.stack([torch.linspace(-1, 1, 50), torch.full((50,), 0.9)], 1)
    untrained = build_model(LactoseConfig())
    target = reference_shaper(x[:, 0], x[:, 1])[:, None]
    with torch.no_grad():
        trained_err = ((model(x, x[:, 1]) - target) ** 2).mean()
        untrained_err = ((untrained(x, x[:, 1]) - target) ** 2).mean()
    assert trained_err < 0.5 * untrained_err
    assert result.metrics["test_mse"] < 0.05
