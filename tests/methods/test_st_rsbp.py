"""ST-RSBP: gradients agree in direction with BPTT, training learns, bad configs fail clearly."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from server.training.st_rsbp import (
    TRAINER,
    RSNNConfig,
    bptt_gradients,
    count_targets,
    effective_spikes,
    st_rsbp_gradients,
)
from shared.methods.digits import load_digits_split
from shared.methods.st_rsbp import RecurrentSNN, encode_task, rows_encode


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_rows_encoding_presents_one_row_at_a_time() -> None:
    x = torch.zeros(1, 64)
    x[0, 8 * 3 : 8 * 4] = 1.0  # only row 3 is lit
    spikes = rows_encode(x, steps_per_row=2)
    assert spikes.shape == (16, 1, 8)
    assert spikes[6:8].sum() == 16 and spikes.sum() == 16


def test_silent_neurons_get_one_spike_at_their_peak() -> None:
    spikes = torch.zeros(4, 1, 2)
    spikes[1, 0, 0] = 1
    membrane = torch.tensor([[0.1, 0.2], [0.9, 0.1], [0.3, 0.7], [0.2, 0.4]]).unsqueeze(1)
    eff = effective_spikes(spikes, membrane)
    assert eff[:, 0, 0].tolist() == [0, 1, 0, 0]
    assert eff[:, 0, 1].tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize(("task", "n_in"), [("rows", 8), ("poisson", 64)])
def test_spike_train_gradients_point_like_bptt(task: str, n_in: int) -> None:
    data = load_digits_split()
    x, y = torch.from_numpy(data.x_train[:48]), torch.from_numpy(data.y_train[:48])
    net = RecurrentSNN(n_in, 60, 10)
    inputs = encode_task(x, task, 32, torch.Generator().manual_seed(0))
    targets = count_targets(y, 10, 16.0, 3.2)
    _, ours, _ = st_rsbp_gradients(net, inputs, targets)
    _, bptt, _ = bptt_gradients(net, inputs, targets)
    for name in ("w_out", "w_in", "w_rec"):
        cos = torch.nn.functional.cosine_similarity(ours[name].flatten(), bptt[name].flatten(), 0)
        assert cos > 0.5, (name, float(cos))


def test_training_beats_chance_and_state_round_trips() -> None:
    result = TRAINER.train(RSNNConfig(task="poisson", epochs=2, hidden=40, time_steps=16))
    assert result.metrics["test_accuracy"] > 0.3
    net = TRAINER.load(result.state)
    inputs = encode_task(torch.rand(5, 64), "poisson", 16, torch.Generator().manual_seed(1))
    assert net.predict(inputs).shape == (5,)


def test_bad_configs_and_inputs_get_clear_errors() -> None:
    with pytest.raises(ValidationError, match="divisible by 8"):
        RSNNConfig(task="rows", time_steps=20)
    with pytest.raises(ValidationError, match="unknown task"):
        RSNNConfig(task="audio")
    with pytest.raises(ValidationError, match="target_low"):
        RSNNConfig(target_high=0.1, target_low=0.2)
    with pytest.raises(ValueError, match="inputs must be"):
        RecurrentSNN(8, 10, 10).run(torch.zeros(4, 2, 9))
