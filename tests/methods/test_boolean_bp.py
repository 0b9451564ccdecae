"""Boolean backprop: packed/float kernels agree bit for bit, truth tables learned exactly."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from server.training.boolean_bp import (
    TRAINER,
    BooleanBPConfig,
    boolean_backprop_step,
    init_boolean_network,
)
from shared.methods.boolean_bp import (
    BooleanNetwork,
    check_binary,
    disagreements_float,
    disagreements_packed,
    pack_bits,
    unpack_bits,
)
from shared.methods.boolean_data import load_boolean_task


def test_pack_round_trip_and_kernels_agree() -> None:
    rng = np.random.default_rng(0)
    a, w = rng.random((7, 131)) < 0.5, rng.random((5, 131)) < 0.5
    assert np.array_equal(unpack_bits(pack_bits(a), 131), a)
    expected = (a[:, None, :] != w[None, :, :]).sum(-1)
    assert np.array_equal(disagreements_packed(a, w), expected)
    assert np.array_equal(disagreements_float(a, w), expected)


def test_packed_and_float_training_give_identical_weights() -> None:
    data = load_boolean_task("digits")
    nets = {b: init_boolean_network([64, 24, 10], 3, b) for b in ("packed", "float")}
    for net in nets.values():
        rng = np.random.default_rng(1)
        for start in range(0, 256, 32):
            boolean_backprop_step(
                net, data.x_train[start : start + 32], data.y_train[start : start + 32], rng, 0.2
            )
    changed = sum(
        int((w != w0).sum())
        for w, w0 in zip(
            nets["packed"].weights, init_boolean_network([64, 24, 10], 3).weights, strict=True
        )
    )
    assert changed > 0
    for wp, wf in zip(nets["packed"].weights, nets["float"].weights, strict=True):
        assert np.array_equal(wp, wf)


@pytest.mark.parametrize("task", ["parity3", "comparator4"])
def test_small_functions_are_learned_exactly(task: str) -> None:
    config = BooleanBPConfig(
        task=task, hidden_sizes=[16], epochs=500, batch_size=8, margin=1, anneal=False
    )
    result = TRAINER.train(config)
    assert result.metrics["train_accuracy"] == 1.0
    net = TRAINER.load(result.state)
    data = load_boolean_task(task)
    assert np.array_equal(net.predict(data.x_test), data.y_test)


def test_state_round_trip_keeps_predictions() -> None:
    net = init_boolean_network([8, 6, 2], 0)
    x = load_boolean_task("comparator8").x_train
    again = BooleanNetwork.from_state(net.state_dict())
    assert np.array_equal(again.predict(x), net.predict(x))


def test_bad_inputs_and_configs_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="binary"):
        check_binary(np.array([[0, 1, 2]]))
    net = init_boolean_network([3, 4, 2], 0)
    with pytest.raises(ValueError, match="binary"):
        net.predict(np.array([[0.5, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="inputs"):
        net.predict(np.zeros((2, 5), dtype=bool))
    with pytest.raises(ValidationError, match="unknown task"):
        BooleanBPConfig(task="xor9")
    with pytest.raises(ValidationError):
        BooleanBPConfig(flip_rate=0)
    with pytest.raises(ValueError, match="labels"):
        boolean_backprop_step(
            net, np.zeros((2, 3), bool), np.array([0, 5]), np.random.default_rng(0), 0.1
        )
