"""Textual inversion: the objective, ZO through the int8 model (SG, PUTS), backprop baseline."""

from __future__ import annotations

import pytest
import torch
from support import make_tiny_denoiser

from device_client.diffusion_personalization import (
    ZOInversionConfig,
    learn_token_zo,
    sample_with_token,
)
from shared.diffusion.artifact import int8_denoiser_bytes, int8_denoiser_from_bytes
from shared.diffusion.data import concept_images
from shared.diffusion.inversion import (
    InversionObjective,
    evaluation_objective,
    learn_token_backprop,
    timestep_range,
)


@pytest.fixture(scope="module")
def models():
    model = make_tiny_denoiser()
    return model, int8_denoiser_from_bytes(int8_denoiser_bytes(model, 7))[0]


def test_puts_draws_timesteps_from_half_to_nine_tenths_of_t(models):
    assert timestep_range(True) == (500, 900) and timestep_range(False) == (0, 1000)
    objective = InversionObjective(models[0], concept_images(5), timestep_range(True), repeats=40)
    drawn = objective.t
    assert drawn.min() >= 500 and drawn.max() < 900 and drawn.float().std() > 50


def test_one_step_sees_fixed_noise_and_the_next_step_new_noise(models):
    model = models[0]
    objective = InversionObjective(model, concept_images(5), timestep_range(False), seed=3)
    token = model.initial_token()
    first = objective(token)
    assert objective(token) == first and objective.forward_passes == 2
    objective.resample(1)
    assert objective(token) != first
    objective.resample(0)
    assert objective(token) == first


def test_backprop_baseline_is_adam_on_the_token(models):
    """The written-out Adam equals torch.optim.Adam step for step."""
    model, images = models[0], concept_images(5)
    ours, _ = learn_token_backprop(model, images, steps=3, lr=1e-2, seed=1)
    token = model.initial_token().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([token], lr=1e-2)
    objective = InversionObjective(model, images, timestep_range(False), seed=1)
    for step in range(3):
        objective.resample(step)
        optimizer.zero_grad()
        objective.loss_tensor(token).backward()
        optimizer.step()
    assert torch.allclose(ours, token.detach(), atol=1e-6)


@pytest.mark.parametrize("subspace", [False, True])
def test_zo_inversion_lowers_the_loss_with_forward_passes_only(models, subspace):
    int8 = models[1]
    images = concept_images(5)
    monitor = evaluation_objective(int8, images)
    config = ZOInversionConfig(steps=150, subspace=subspace, tau=32, seed=0)
    result = learn_token_zo(int8, images, config, monitor=monitor, monitor_every=50)
    assert result.forward_passes == 150 * 2  # one-sided, n = 1
    start, end = result.monitored[0][1], result.monitored[-1][1]
    assert end < start - 1e-3, (start, end)
    if subspace:  # d = 8 <= tau: the estimate is confined to the top principal directions
        assert result.d_eff is not None and result.d_eff < 8
    else:
        assert result.d_eff is None
    assert not any(p.requires_grad for p in int8.parameters())


def test_zo_stops_at_a_target_and_validates_its_config(models):
    int8, images = models[1], concept_images(5)
    monitor = evaluation_objective(int8, images)
    start = monitor(int8.initial_token())
    result = learn_token_zo(
        int8, images, ZOInversionConfig(steps=300), monitor, monitor_every=10, stop_below=start
    )
    assert result.forward_passes < 600 and result.monitored[-1][1] < start
    with pytest.raises(ValueError, match="n_directions"):
        ZOInversionConfig(n_directions=4)


def test_samples_are_images_in_range(models):
    images = sample_with_token(models[1], models[1].initial_token(), 3, steps=5, seed=1)
    assert images.shape == (3, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, sample_with_token(models[1], models[1].initial_token(), 3, 5, 1))
