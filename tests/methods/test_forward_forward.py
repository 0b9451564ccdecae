"""FF-SNN, FF and BP-SNN: LIF dynamics, encoders, locality of FF updates, training, validation."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from server.training.forward_forward import (
    BP_SNN_TRAINER,
    FF_SNN_TRAINER,
    FF_TRAINER,
    TRAINERS,
    BPSNNConfig,
    FFConfig,
    FFSNNConfig,
    forward_forward_loss,
    forward_forward_step,
    wrong_labels,
)
from shared.methods.digits import check_dataset, load_digits_split
from shared.methods.forward_forward import (
    FFReLUNet,
    FFSpikingNet,
    build_predictor,
    embed_label,
    normalise_length,
)
from shared.methods.spiking import encode, latency_encode, lif_run, poisson_encode, spike


def _hand_lif_trace(currents: list[float], beta: float, threshold: float, reset: str):
    """Scalar LIF, written out independently of lif_run."""
    u, spikes, membrane = 0.0, [], []
    for current in currents:
        u = beta * u + current
        fired = 1.0 if u >= threshold else 0.0
        if fired:
            u = u - threshold if reset == "subtract" else 0.0
        spikes.append(fired)
        membrane.append(u)
    return spikes, membrane


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_lif_matches_hand_trace(reset: str) -> None:
    currents = [0.6, 0.6, 0.6, 0.0, 1.5, 0.2, 0.9, 0.9]
    trace = lif_run(torch.tensor(currents).view(-1, 1, 1), beta=0.5, threshold=1.0, reset=reset)
    spikes, membrane = _hand_lif_trace(currents, 0.5, 1.0, reset)
    assert trace.spikes.flatten().tolist() == spikes
    np.testing.assert_allclose(trace.membrane.flatten().numpy(), membrane, atol=1e-6)


def test_lif_known_values() -> None:
    # beta 0.5, threshold 1, constant 0.6: u = 0.6, 0.9, 1.05 -> spike, 0.05, then 0.625
    trace = lif_run(torch.full((4, 1, 1), 0.6), beta=0.5, threshold=1.0)
    assert trace.spikes.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]
    np.testing.assert_allclose(trace.membrane.flatten().numpy(), [0.6, 0.9, 0.05, 0.625], atol=1e-6)


def test_surrogate_gradient_is_fast_sigmoid() -> None:
    centred = torch.tensor([-0.5, 0.0, 0.3], requires_grad=True)
    spike(centred, slope=4.0).sum().backward()
    expected = 1.0 / (1.0 + 4.0 * centred.detach().abs()) ** 2
    torch.testing.assert_close(centred.grad, expected)


def test_lif_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[T, N, D\]"):
        lif_run(torch.zeros(3, 4), beta=0.9)
    with pytest.raises(ValueError, match="beta"):
        lif_run(torch.zeros(3, 1, 1), beta=1.5)
    with pytest.raises(ValueError, match="threshold"):
        lif_run(torch.zeros(3, 1, 1), beta=0.5, threshold=0.0)


def test_poisson_rate_matches_intensity() -> None:
    intensities = torch.tensor([[0.0, 0.1, 0.5, 0.9, 1.0]])
    spikes = poisson_encode(intensities, 20_000, torch.Generator().manual_seed(3))
    rates = spikes.mean(dim=0)
    # binomial standard error at T = 20000 is at most 0.0036
    torch.testing.assert_close(rates, intensities, atol=0.015, rtol=0.0)
    again = poisson_encode(intensities, 20_000, torch.Generator().manual_seed(3))
    assert torch.equal(spikes, again), "the same seed must give the same spikes"


def test_latency_and_static_encoders() -> None:
    x = torch.tensor([[1.0, 0.5, 0.0]])
    spikes = latency_encode(x, 5)
    assert spikes.sum(dim=0).flatten().tolist() == [1.0, 1.0, 0.0]
    assert spikes[0, 0, 0] == 1.0 and spikes[2, 0, 1] == 1.0
    static = encode(x, "static", 4)
    assert static.shape == (4, 1, 3) and torch.equal(static[3], x)
    with pytest.raises(ValueError, match="unknown encoding"):
        encode(x, "morse", 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        poisson_encode(torch.tensor([[1.5]]), 4)


def test_label_embedding_puts_one_hot_first() -> None:
    inputs = torch.rand(3, 2, 64)
    labels = torch.tensor([7, 2])
    embedded = embed_label(inputs, labels, 10)
    assert embedded.shape == (3, 2, 74)
    for sample, label in enumerate(labels.tolist()):
        expected = torch.zeros(10)
        expected[label] = 1.0
        for step in range(3):
            assert torch.equal(embedded[step, sample, :10], expected)
    assert torch.equal(embedded[..., 10:], inputs)


def test_normalise_length_unit_rms_and_detached() -> None:
    inputs = torch.rand(4, 3, 20, requires_grad=True)
    out = normalise_length(inputs)
    assert not out.requires_grad
    rms = out.pow(2).mean(dim=(0, 2)).sqrt()
    torch.testing.assert_close(rms, torch.ones(3), atol=1e-4, rtol=0)


@pytest.mark.parametrize("net_class", [FFSpikingNet, FFReLUNet])
def test_no_gradient_crosses_layers(net_class: type) -> None:
    torch.manual_seed(0)
    net = net_class(74, [30, 20, 10])
    inputs = embed_label(torch.rand(5, 8, 64), torch.randint(0, 10, (8,)), 10)
    activities = net(inputs)  # chained without any explicit detach by the caller
    loss = net.goodness(activities[1]).sum()
    loss.backward()
    assert all(p.grad is None for p in net.layers[0].parameters())
    assert all(p.grad is None for p in net.layers[2].parameters())
    assert net.layers[1].weight.grad is not None and net.layers[1].weight.grad.abs().sum() > 0


def test_forward_forward_step_matches_independent_layer_updates() -> None:
    torch.manual_seed(1)
    net = FFSpikingNet(74, [16, 16])
    original = copy.deepcopy(net)
    optimisers = [torch.optim.SGD(layer.parameters(), lr=0.5) for layer in net.layers]
    x = torch.rand(6, 4, 64)
    labels = torch.tensor([0, 1, 2, 3])
    positive, negative = embed_label(x, labels, 10), embed_label(x, (labels + 1) % 10, 10)
    losses = forward_forward_step(net, optimisers, positive, negative, 0.2, 10.0)
    assert len(losses) == 2 and all(np.isfinite(losses))

    # independent reference: each layer alone, fed the other layer's detached output
    for index in range(2):
        layer = copy.deepcopy(original.layers[index])
        inputs_pos, inputs_neg = positive, negative
        for earlier in range(index):
            inputs_pos = original.layer_forward(earlier, inputs_pos).detach()
            inputs_neg = original.layer_forward(earlier, inputs_neg).detach()
        single = FFSpikingNet(layer.in_features, [layer.out_features])
        single.layers[0] = layer
        loss = forward_forward_loss(
            single.goodness(single.layer_forward(0, inputs_pos)),
            single.goodness(single.layer_forward(0, inputs_neg)),
            0.2,
            10.0,
        )
        loss.backward()
        assert loss.item() == pytest.approx(losses[index], rel=1e-5)
        expected = layer.weight.detach() - 0.5 * layer.weight.grad
        torch.testing.assert_close(net.layers[index].weight.detach(), expected)


def test_forward_forward_loss_matches_formula() -> None:
    g_pos, g_neg = torch.tensor([0.5, 0.1]), torch.tensor([0.3, 0.0])
    expected = np.mean(
        np.log1p(np.exp(10 * (0.2 - g_pos.numpy()))) + np.log1p(np.exp(10 * (g_neg.numpy() - 0.2)))
    )
    assert forward_forward_loss(g_pos, g_neg, 0.2, 10.0).item() == pytest.approx(expected, rel=1e-5)
    contrast = np.mean(np.log1p(np.exp(30 * (g_neg.numpy() - g_pos.numpy()))))
    got = forward_forward_loss(g_pos, g_neg, 0.2, 30.0, "contrast").item()
    assert got == pytest.approx(contrast, rel=1e-5)
    with pytest.raises(ValueError, match="contrast"):
        forward_forward_loss(g_pos, g_neg, 0.2, 30.0, "hinge")


def test_wrong_labels_are_wrong() -> None:
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(0))
    negatives = wrong_labels(labels, torch.Generator().manual_seed(1))
    assert (negatives != labels).all() and len(set(negatives.tolist())) == 10
    scores = torch.zeros(2, 10)
    scores[0, 3], scores[0, 4], scores[1, 5] = 5.0, 4.0, 1.0
    assert wrong_labels(torch.tensor([3, 5]), torch.Generator(), scores).tolist()[0] == 4
    assert wrong_labels(torch.tensor([3, 5]), torch.Generator(), scores).tolist()[1] != 5


def test_digits_split_shapes_and_checks() -> None:
    data = load_digits_split()
    assert data.x_train.shape == (1347, 64) and data.x_test.shape == (450, 64)
    assert data.x_train.min() >= 0 and data.x_train.max() <= 1
    # stratified: each class's test count is a quarter of its full count, to rounding
    full_counts = np.bincount(np.concatenate([data.y_train, data.y_test]))
    assert np.abs(np.bincount(data.y_test) - 0.25 * full_counts).max() <= 1.0
    with pytest.raises(ValueError, match=r"\[N, 64\]"):
        check_dataset(np.zeros((5, 8, 8)), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="labels"):
        check_dataset(np.zeros((5, 64)), np.zeros(4, dtype=int))


def test_small_ff_snn_training_beats_chance() -> None:
    torch.set_num_threads(1)
    config = FFSNNConfig(hidden_sizes=[200, 200], epochs=3, time_steps=6, lr=2e-3)
    result = FF_SNN_TRAINER.train(config)
    assert result.metrics["test_accuracy"] > 0.6
    predictor = FF_SNN_TRAINER.load(result.state)
    data = load_digits_split()
    predictions = predictor.predict(data.x_test)
    assert predictions.dtype == np.int64 and predictions.shape == (450,)
    assert float(np.mean(predictions == data.y_test)) == pytest.approx(
        result.metrics["test_accuracy"]
    )
    # a torch.save round trip keeps the predictor identical
    buffer = io.BytesIO()
    torch.save(result.state, buffer)
    buffer.seek(0)
    reloaded = build_predictor(torch.load(buffer, weights_only=True))
    assert np.array_equal(reloaded.predict(data.x_test), predictions)


@pytest.mark.parametrize(
    ("trainer", "encoding"), [(FF_TRAINER, "static"), (BP_SNN_TRAINER, "poisson")]
)
def test_baselines_train_and_predict(trainer, encoding: str) -> None:
    torch.set_num_threads(1)
    config = trainer.config_model(hidden_sizes=[100], epochs=4, time_steps=5, encoding=encoding)
    result = trainer.train(config)
    assert result.metrics["test_accuracy"] > 0.5
    predictions = trainer.load(result.state).predict(load_digits_split().x_test[:10])
    assert predictions.shape == (10,)


def test_progress_is_reported() -> None:
    seen: list[float] = []
    FF_TRAINER.train(FFConfig(hidden_sizes=[16], epochs=2), lambda f, m: seen.append(f))
    assert seen == [0.5, 1.0]


def test_registered_names() -> None:
    assert set(TRAINERS) == {"ff_snn", "ff", "bp_snn"}
    assert all(name == trainer.name for name, trainer in TRAINERS.items())


@pytest.mark.parametrize("config_class", [FFSNNConfig, FFConfig, BPSNNConfig])
def test_config_validation(config_class: type) -> None:
    with pytest.raises(ValidationError, match="hidden_sizes"):
        config_class(hidden_sizes=[100, -5])
    with pytest.raises(ValidationError, match="hidden_sizes"):
        config_class(hidden_sizes=[])
    with pytest.raises(ValidationError, match="encoding"):
        config_class(encoding="morse")
    with pytest.raises(ValidationError, match="epochs"):
        config_class(epochs=0)
    with pytest.raises(ValidationError, match="extra"):
        config_class(learning_rate=0.1)


def test_trainer_rejects_wrong_config_type() -> None:
    with pytest.raises(TypeError, match="FFSNNConfig"):
        FF_SNN_TRAINER.train(BPSNNConfig())


def test_predict_rejects_wrong_shape() -> None:
    net = FFSpikingNet(74, [8])
    state = {
        "kind": "ff_snn",
        "num_classes": 10,
        "num_features": 64,
        "hidden_sizes": [8],
        "time_steps": 3,
        "encoding": "static",
        "seed": 0,
        "skip_first_layer": False,
        "beta": 0.9,
        "threshold": 1.0,
        "slope": 5.0,
        "weights": net.state_dict(),
    }
    predictor = build_predictor(state)
    assert predictor.predict(np.random.default_rng(0).random((3, 64))).shape == (3,)
    with pytest.raises(ValueError, match=r"\[N, 64\]"):
        predictor.predict(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match=r"\[N, 64\]"):
        predictor.predict(np.zeros((3, 63)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predictor.predict(np.full((3, 64), 16.0))
    with pytest.raises(ValueError, match="kind"):
        build_predictor({**state, "kind": "mystery"})
