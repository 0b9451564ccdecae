"""Trainer of the tiny class-conditional DDPM (hub method ``diffusion``), its int8 export and
the registration of learned tokens.

The denoiser (:mod:`shared.diffusion.denoiser`) learns ``eps``-prediction on 16x16 digits of
every class but the held-out one (DDPM, T = 1000, uniform timesteps, MSE), with Adam and an
exponential moving average of the weights (the EMA weights are what is saved, as usual for
DDPMs). The held-out class's token row is never trained; a device learns a token for that
concept by zeroth-order textual inversion (``device_client/diffusion_personalization.py``).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from server.training.base import ProgressFn, TrainResult, no_progress
from server.training.data_parallel import DataParallel
from shared.diffusion.artifact import (
    denoiser_from_state,
    denoiser_state,
    float_denoiser_from_bytes,
    int8_denoiser_bytes,
    token_from_bytes,
)
from shared.diffusion.data import HELD_OUT_CLASS, NUM_CLASSES, denoiser_training_set
from shared.diffusion.denoiser import Denoiser, DenoiserConfig
from shared.diffusion.schedule import NoiseSchedule
from shared.model_names import DIFFUSION_MODEL, DIFFUSION_TOKEN_MODEL


class DiffusionConfig(BaseModel):
    """Config of ``diffusion`` (defaults: a few minutes on 2 CPU cores)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=2500, gt=0, description="optimiser steps")
    batch_size: int = Field(default=48, gt=0)
    lr: float = Field(default=2e-3, gt=0)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    width: int = Field(default=16, ge=8, description="channels at 16x16 (2x at 8x8)")
    token_dim: int = Field(default=32, gt=0)
    held_out_class: int = Field(default=HELD_OUT_CLASS, ge=0, lt=NUM_CLASSES)
    seed: int = Field(default=0, ge=0)


def train_denoiser(config: DiffusionConfig, progress: ProgressFn = no_progress) -> Denoiser:
    """Train and return the EMA denoiser (eval mode, frozen)."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    data = denoiser_training_set(config.held_out_class)
    model = Denoiser(DenoiserConfig(width=config.width, token_dim=config.token_dim))
    with torch.no_grad():
        model.trained_classes[config.held_out_class] = 0.0
    ema = copy.deepcopy(model).requires_grad_(False)
    schedule = NoiseSchedule()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    parallel = DataParallel.from_environment()  # torchrun: each rank a share of every batch
    parallel.attach(optimizer)
    lr_at = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 200) * (1.0 - 0.9 * s / config.steps)
    )
    running = None
    for step in range(config.steps):
        idx = torch.randint(len(data.images), (config.batch_size,), generator=generator)
        x0, labels = data.images[idx], data.labels[idx]
        t = torch.randint(schedule.steps, (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x0, labels, t, noise = parallel.shard_rows(x0, labels, t, noise)
        predicted = model(schedule.add_noise(x0, t, noise), t, model.class_token(labels))
        loss = torch.mean((predicted - noise) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_at.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - config.ema_decay)
        value = float(loss.detach())
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % 50 == 0 or step == config.steps - 1:
            progress((step + 1) / config.steps, f"step {step + 1} loss {running:.4f}")
    return ema.eval()


class DiffusionTrainer:
    """Hub trainer: config in, progress out, the float denoiser as the artifact state."""

    name = DIFFUSION_MODEL
    config_model = DiffusionConfig

    def train(self, config: BaseModel, progress: ProgressFn = no_progress) -> TrainResult:
        if not isinstance(config, DiffusionConfig):
            config = DiffusionConfig.model_validate(config)
        start = time.perf_counter()
        model = train_denoiser(config, progress)
        seconds = time.perf_counter() - start
        metrics = {
            "train_seconds": round(seconds, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            "held_out_class": config.held_out_class,
        }
        return TrainResult(
            state=denoiser_state(model, config.held_out_class),
            metrics=metrics,
            config=config.model_dump(mode="json"),
        )

    def load(self, state: dict[str, Any]) -> Denoiser:
        return denoiser_from_state(state)


TRAINER = DiffusionTrainer()


def export_int8(registry: Any, name: str = DIFFUSION_MODEL) -> Any:
    """Register the int8 variant of the newest float ``diffusion`` model (same version)."""
    record = registry.latest_model(name, "float")
    model, state = float_denoiser_from_bytes(registry.artifacts.read_bytes(record.artifact_sha256))
    data = int8_denoiser_bytes(model, state["held_out_class"], record.metrics)
    return registry.register_int8(record, data, "int8 per-channel weights (weight-only)")


def register_token(registry: Any, data: bytes, metrics: dict[str, Any] | None = None) -> Any:
    """Register a learned-token file as model ``diffusion_token``.

    The file must name (by sha256) a registered ``diffusion`` artifact, float or int8: a token
    only means something to the denoiser it was learned on. ValueError otherwise.
    """
    payload = token_from_bytes(data)
    known = {r.artifact_sha256 for r in registry.list_models(DIFFUSION_MODEL)}
    if payload["denoiser_sha256"] not in known:
        raise ValueError(
            "the token was learned on a denoiser this registry does not hold "
            f"(sha256 {payload['denoiser_sha256'][:12]}…)"
        )
    return registry.register_model(
        DIFFUSION_TOKEN_MODEL,
        DIFFUSION_MODEL,
        {"denoiser_sha256": payload["denoiser_sha256"], **payload["info"]},
        dict(metrics or {}),
        data,
    )
