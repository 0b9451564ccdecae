"""The DDPM pieces: data, schedule, sampler, denoiser, int8 weights and the artifact files."""

from __future__ import annotations

import pytest
import torch
from support import make_tiny_denoiser

from shared.diffusion.artifact import (
    float_denoiser_from_bytes,
    int8_denoiser_bytes,
    int8_denoiser_from_bytes,
    token_bytes,
    token_from_bytes,
)
from shared.diffusion.data import concept_images, denoiser_training_set, digit_splits, upscale
from shared.diffusion.int8 import Int8Conv2d, Int8Linear, weight_bytes
from shared.diffusion.schedule import NoiseSchedule


def test_digits_are_16x16_in_minus_one_to_one_and_the_held_out_class_is_absent():
    train, test = digit_splits()
    assert train.images.shape[1:] == (1, 16, 16) and len(train.images) + len(test.images) == 1797
    assert train.images.min() >= -1 and train.images.max() <= 1
    kept = denoiser_training_set(held_out=3)
    assert 3 not in kept.labels.tolist() and len(set(kept.labels.tolist())) == 9
    concept = concept_images(5, held_out=3)
    assert concept.shape == (5, 1, 16, 16)
    assert not torch.equal(concept, concept_images(5, held_out=3, offset=1))
    with pytest.raises(ValueError, match="held-out class"):
        denoiser_training_set(held_out=10)
    with pytest.raises(ValueError, match="offset"):
        concept_images(5, held_out=3, offset=1000)


def test_upscale_keeps_black_black_and_white_white():
    images = upscale(torch.tensor([[0.0] * 64, [16.0] * 64]))
    assert torch.allclose(images[0], torch.full((1, 16, 16), -1.0))
    assert torch.allclose(images[1], torch.full((1, 16, 16), 1.0))


def test_forward_process_goes_from_image_to_noise():
    schedule = NoiseSchedule()
    assert schedule.steps == 1000 and bool((schedule.alpha_bar.diff() < 0).all())
    x0, noise = torch.ones(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    early = schedule.add_noise(x0, torch.tensor([0, 0]), noise)
    late = schedule.add_noise(x0, torch.tensor([999, 999]), noise)
    assert (early - x0).abs().max() < 0.05
    assert (late - noise).abs().max() < 0.05  # alpha_bar_T ~ 4e-5
    with pytest.raises(ValueError, match="timesteps"):
        schedule.add_noise(x0, torch.tensor([0, 1000]), noise)


def test_sampler_with_a_perfect_denoiser_returns_the_one_training_image():
    """If eps is predicted exactly for a single-point data set, sampling recovers that point."""
    schedule = NoiseSchedule()
    target = torch.linspace(-0.9, 0.9, 256).reshape(1, 1, 16, 16)

    def exact_eps(x, t):
        ab = schedule.alpha_bar[t].float().reshape(-1, 1, 1, 1)
        return (x - ab.sqrt() * target) / (1 - ab).sqrt()

    generator = torch.Generator().manual_seed(0)
    images = schedule.sample(exact_eps, (3, 1, 16, 16), steps=50, generator=generator)
    assert (images - target).abs().max() < 1e-3


def test_denoiser_checks_its_inputs():
    model = make_tiny_denoiser()
    x, t = torch.zeros(2, 1, 16, 16), torch.tensor([1, 2])
    assert model(x, t, torch.zeros(2, 8)).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="images"):
        model(torch.zeros(2, 1, 8, 8), t, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="tokens"):
        model(x, t, torch.zeros(2, 9))
    with pytest.raises(ValueError, match="timesteps"):
        model(x, t.float(), torch.zeros(2, 8))


def test_initial_token_is_the_mean_of_the_trained_tokens_only():
    model = make_tiny_denoiser(held_out=7)
    rows = model.tokens.weight
    expected = torch.cat([rows[:7], rows[8:]]).mean(0)
    assert torch.allclose(model.initial_token(), expected)
    assert not torch.allclose(model.initial_token(), rows.mean(0))


def test_int8_denoiser_keeps_int8_weights_and_tracks_the_float_model():
    model = make_tiny_denoiser()
    int8, payload = int8_denoiser_from_bytes(int8_denoiser_bytes(model, 7))
    layers = [m for m in int8.modules() if isinstance(m, Int8Conv2d | Int8Linear)]
    assert len(layers) == sum(
        isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for m in model.modules()
    )
    assert all(layer.qweight.dtype == torch.int8 for layer in layers)
    assert weight_bytes(int8) < weight_bytes(model) / 3
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([10, 300, 600, 990])
    tokens = model.class_token(torch.tensor([0, 1, 2, 3]))
    reference = model(x, t, tokens)
    error = (int8(x, t, tokens) - reference).abs().max() / reference.abs().max()
    assert 0 < error < 0.05
    assert payload["held_out_class"] == 7 and not any(p.requires_grad for p in int8.parameters())


def test_artifacts_reject_the_wrong_file():
    model = make_tiny_denoiser()
    int8_bytes = int8_denoiser_bytes(model, 7)
    with pytest.raises(ValueError, match="not a SecDOOD method artifact"):
        float_denoiser_from_bytes(int8_bytes)
    with pytest.raises(ValueError, match="int8 diffusion artifact"):
        int8_denoiser_from_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="learned-token"):
        token_from_bytes(int8_bytes)


def test_token_files_round_trip_and_refuse_non_finite_tokens():
    token = torch.randn(8)
    loaded = token_from_bytes(token_bytes(token, "ab" * 32, {"name": "seven"}))
    assert torch.equal(loaded["token"], token) and loaded["info"] == {"name": "seven"}
    with pytest.raises(ValueError, match="finite"):
        token_bytes(torch.tensor([1.0, float("nan")]), "ab" * 32, {})
