"""Z-IL / Fa-Z-IL equal backprop exactly; breaking any one Z-IL condition breaks it."""

from __future__ import annotations

import io

import pytest
import torch
from pydantic import ValidationError

from server.training.predictive_coding import (
    FA_ZIL_TRAINER,
    IL_TRAINER,
    ZIL_TRAINER,
    ILConfig,
    PCConfig,
    init_weights,
    pc_learning_step,
)
from shared.methods.predictive_coding import PredictiveCodingMLP

SIZES = [16, 12, 8, 5]  # a 4-layer MLP: input, two hidden, output
LR = 0.01


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Tiny matmuls on a shared 2-core box: extra threads only add contention.
    torch.set_num_threads(1)


def _batches(n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n_steps, 8, SIZES[0], dtype=torch.float64, generator=gen)
    t = torch.rand(n_steps, 8, SIZES[-1], dtype=torch.float64, generator=gen)
    return x, t


def _reference_backprop(n_steps: int, activation: str) -> list[torch.Tensor]:
    """Independent BP: nn.Linear layers (no bias) trained by torch.optim.SGD."""
    f = torch.sigmoid if activation == "sigmoid" else torch.tanh
    layers = [
        torch.nn.Linear(n_in, n_out, bias=False).double()
        for n_in, n_out in zip(SIZES[:-1], SIZES[1:], strict=True)
    ]
    with torch.no_grad():
        for layer, w in zip(layers, init_weights(SIZES, seed=1), strict=True):
            layer.weight.copy_(w)
    opt = torch.optim.SGD([p for layer in layers for p in layer.parameters()], lr=LR)
    x, t = _batches(n_steps)
    for step in range(n_steps):
        out = x[step]
        for layer in layers:
            out = layer(f(out))
        opt.zero_grad()
        (0.5 * ((t[step] - out) ** 2).sum()).backward()
        opt.step()
    return [layer.weight.detach() for layer in layers]


def _run_pc(n_steps: int, activation: str = "sigmoid", **overrides: object) -> list[torch.Tensor]:
    weights = init_weights(SIZES, seed=1)
    x, t = _batches(n_steps)
    kwargs: dict = {
        "activation": activation,
        "lr": LR,
        "inference_rate": 1.0,
        "inference_steps": len(SIZES) - 1,
        "schedule": "zil",
        "generator": torch.Generator().manual_seed(5),
    }
    kwargs.update(overrides)
    for step in range(n_steps):
        pc_learning_step(weights, x[step], t[step], **kwargs)
    return weights


def _gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((wa - wb).abs().max()) for wa, wb in zip(a, b, strict=True))


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
@pytest.mark.parametrize("n_steps", [1, 100])
@pytest.mark.parametrize("schedule", ["zil", "fa_zil"])
def test_zil_and_fa_zil_equal_backprop(schedule: str, n_steps: int, activation: str) -> None:
    pc = _run_pc(n_steps, activation, schedule=schedule)
    bp = _reference_backprop(n_steps, activation)
    assert _gap(pc, init_weights(SIZES, seed=1)) > 1e-3  # it did learn something
    assert _gap(pc, bp) <= 1e-10


@pytest.mark.parametrize("hidden_init", ["zero", "random"])
def test_breaking_feedforward_init_breaks_equality(hidden_init: str) -> None:
    assert _gap(_run_pc(100, hidden_init=hidden_init), _reference_backprop(100, "sigmoid")) > 1e-6


def test_breaking_unit_inference_rate_breaks_equality() -> None:
    bp = _reference_backprop(100, "sigmoid")
    assert _gap(_run_pc(100, inference_rate=0.5), bp) > 1e-6
    # Even 0.99999 is visibly off: many orders of magnitude above float64 rounding.
    assert _gap(_run_pc(100, inference_rate=0.99999), bp) > 1e-8


def test_breaking_layer_schedule_breaks_equality() -> None:
    # Same init and γ = 1, but every layer is updated together after the last step.
    assert _gap(_run_pc(100, schedule="end"), _reference_backprop(100, "sigmoid")) > 1e-6


def test_fa_zil_latches_fire_once_each_after_l_steps() -> None:
    weights = init_weights(SIZES, seed=1)
    x, t = _batches(1)
    stats = pc_learning_step(
        weights,
        x[0],
        t[0],
        activation="sigmoid",
        lr=LR,
        inference_rate=1.0,
        inference_steps=50,  # only a cap: it stops once every latch fired
        schedule="fa_zil",
    )
    assert stats["inference_steps"] == len(SIZES) - 1


def test_il_energy_decreases_with_inference() -> None:
    x, t = _batches(1)
    energies = []
    for steps in (1, 5, 40):
        weights = init_weights(SIZES, seed=1)
        stats = pc_learning_step(
            weights,
            x[0],
            t[0],
            activation="tanh",
            lr=0.0,
            inference_rate=0.1,
            inference_steps=steps,
            schedule="end",
        )
        energies.append(stats["energy"])
    assert energies[0] > energies[1] > energies[2]


def test_il_and_fa_zil_learn_digits() -> None:
    for trainer in (IL_TRAINER, FA_ZIL_TRAINER):
        result = trainer.train(trainer.config_model(epochs=3))
        assert result.metrics["test_accuracy"] > 0.8, trainer.name


def test_state_round_trips_through_torch_save() -> None:
    result = ZIL_TRAINER.train(PCConfig(epochs=1))
    buffer = io.BytesIO()
    torch.save(result.state, buffer)
    buffer.seek(0)
    model = ZIL_TRAINER.load(torch.load(buffer))
    assert isinstance(model, PredictiveCodingMLP)
    x = torch.rand(4, 64, dtype=torch.float64)
    expected = PredictiveCodingMLP.from_state(result.state)(x)
    torch.testing.assert_close(model(x), expected)
    assert model.predict(x).shape == (4,)


def test_bad_inputs_raise_clear_errors() -> None:
    weights = init_weights(SIZES, seed=1)
    with pytest.raises(ValueError, match="inputs must be"):
        pc_learning_step(
            weights,
            torch.zeros(2, 3, dtype=torch.float64),
            torch.zeros(2, 5, dtype=torch.float64),
            activation="tanh",
            lr=0.1,
            inference_rate=1.0,
            inference_steps=3,
            schedule="zil",
        )
    with pytest.raises(ValueError, match="schedule"):
        pc_learning_step(
            weights,
            torch.zeros(2, 16, dtype=torch.float64),
            torch.zeros(2, 5, dtype=torch.float64),
            activation="tanh",
            lr=0.1,
            inference_rate=1.0,
            inference_steps=3,
            schedule="later",  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="expected inputs of shape"):
        PredictiveCodingMLP(weights, "tanh")(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="activation"):
        PredictiveCodingMLP(weights, "relu")
    with pytest.raises(ValidationError):
        PCConfig(lr=-1.0)
    with pytest.raises(ValidationError):
        PCConfig(layer_sizes=[64, 10, 3])
    with pytest.raises(ValidationError):
        ILConfig(inference_rate=1.5)
    with pytest.raises(ValidationError):
        PCConfig(unknown_field=1)
