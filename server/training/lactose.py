"""LACTOSE on a DDSP task: learning a piecewise waveshaper from audio made on the fly.

The target effect is a distortion whose character switches with a "drive"
knob ``c ∈ [0, 1]`` (:func:`reference_shaper`): soft clipping below 1/3, hard
clipping from 1/3, wave folding from 2/3, each with a gain that rises with
``c`` inside its range — so the transfer curve jumps at the two switch points.
Every training step synthesises fresh clips (random fundamental, harmonics,
amplitude envelope, 16 kHz), draws one ``c`` per clip and trains the model to
map each input sample ``x`` (with ``c``) to the shaped sample. LACTOSE
(:class:`shared.methods.lactose.IntervalMLP`) holds one small MLP per interval;
the baseline is one MLP on ``(x, c)`` with as close to the same total
parameter count as an integer width allows.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.training.base import ProgressFn, TrainResult, no_progress
from server.training.data_parallel import DataParallel
from shared.methods.lactose import (
    IntervalMLP,
    check_boundaries,
    mlp_parameter_count,
    mlp_sizes,
)

#: where the reference effect switches character (also LACTOSE's default boundaries)
SWITCH_POINTS = (1 / 3, 2 / 3)
SAMPLE_RATE = 16_000


def reference_shaper(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The effect to learn: soft clip / hard clip / fold, chosen and scaled by ``c``."""
    low, high = SWITCH_POINTS
    soft_gain = 1 + 6 * c
    soft = torch.tanh(soft_gain * x) / torch.tanh(soft_gain)
    hard = 0.8 * torch.clamp((1 + 6 * (c - low)) * x, -1, 1)
    fold = torch.sin(0.5 * math.pi * (1 + 3 * (c - high)) * x)
    return torch.where(c < low, soft, torch.where(c < high, hard, fold))


def synth_clips(
    n_clips: int, length: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random harmonic tones ``[n_clips, length]`` in [−1, 1] and one drive value per clip.

    A quarter of the drives sit exactly on a boundary (0, 1/3, 2/3 or 1).
    """
    t = torch.arange(length) / SAMPLE_RATE
    f0 = 55 * 2 ** (torch.rand(n_clips, 1, generator=generator) * 4)  # 55 … 880 Hz
    phase = torch.rand(n_clips, 1, generator=generator) * 2 * math.pi
    audio = torch.zeros(n_clips, length)
    for harmonic in range(1, 5):
        weight = torch.rand(n_clips, 1, generator=generator) / harmonic
        audio += weight * torch.sin(2 * math.pi * harmonic * f0 * t + harmonic * phase)
    peak = audio.abs().amax(dim=1, keepdim=True).clamp(min=1e-6)
    amplitude = 0.2 + 0.8 * torch.rand(n_clips, 1, generator=generator)
    envelope = torch.linspace(1.0, 0.6, length)
    audio = amplitude * envelope * audio / peak
    drive = torch.rand(n_clips, generator=generator)
    on_boundary = torch.rand(n_clips, generator=generator) < 0.25
    corners = torch.tensor([0.0, *SWITCH_POINTS, 1.0])
    pick = torch.randint(len(corners), (n_clips,), generator=generator)
    drive = torch.where(on_boundary, corners[pick], drive)
    return audio, drive


def as_samples(audio: torch.Tensor, drive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample model inputs ``[N, 2]`` = (x, c) and conditioning ``[N]``."""
    c = drive[:, None].expand_as(audio).reshape(-1)
    return torch.stack([audio.reshape(-1), c], dim=1), c


class Unconditioned(torch.nn.Module):
    """Baseline: one tanh MLP on (x, c)."""

    def __init__(self, sizes: list[int], seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(torch.nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(torch.nn.Tanh())
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def matched_width(target_params: int, depth: int) -> int:
    """Hidden width of a ``depth``-hidden-layer MLP on 2 inputs closest to ``target_params``."""
    return min(
        range(1, 512),
        key=lambda h: abs(mlp_parameter_count(mlp_sizes(2, [h] * depth, 1)) - target_params),
    )


class LactoseConfig(BaseModel):
    """One parameter set per drive interval; waveshaper learned from synthetic audio."""

    model_config = ConfigDict(extra="forbid")

    boundaries: list[float] = Field(default_factory=lambda: [0.0, *SWITCH_POINTS, 1.0])
    hidden: list[int] = Field(default_factory=lambda: [16, 16], min_length=1)
    steps: int = Field(1500, gt=0)
    clips_per_step: int = Field(16, gt=0)
    clip_length: int = Field(256, gt=0, description="samples per clip (16 kHz)")
    lr: float = Field(3e-3, gt=0)
    conditioned: bool = Field(True, description="False: the unconditioned baseline")
    seed: int = 0

    @field_validator("boundaries")
    @classmethod
    def _valid_boundaries(cls, value: list[float]) -> list[float]:
        b = check_boundaries(value)
        if b[0].item() > 0 or b[-1].item() < 1:
            raise ValueError(f"boundaries must cover the drive range [0, 1], got {value}")
        return value

    @field_validator("hidden")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(n <= 0 for n in value):
            raise ValueError(f"hidden widths must be positive, got {value}")
        return value


def build_model(config: LactoseConfig) -> torch.nn.Module:
    """LACTOSE net, or the unconditioned baseline with the matched parameter count."""
    lactose = IntervalMLP(config.boundaries, mlp_sizes(2, config.hidden, 1), config.seed)
    if config.conditioned:
        return lactose
    width = matched_width(lactose.parameter_count(), len(config.hidden))
    return Unconditioned(mlp_sizes(2, [width] * len(config.hidden), 1), config.seed)


def held_out_set(seed: int = 12_345) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed held-out clips: inputs ``[N, 2]``, conditioning ``[N]``, targets ``[N, 1]``."""
    audio, drive = synth_clips(64, 512, torch.Generator().manual_seed(seed))
    x, c = as_samples(audio, drive)
    return x, c, reference_shaper(x[:, 0], c)[:, None]


def evaluate(model: torch.nn.Module) -> dict[str, float]:
    """Test MSE and SNR (dB) on held-out clips, and MSE on inputs exactly at the boundaries."""
    x, c, y = held_out_set()
    with torch.no_grad():
        pred = model(x, c)
        mse = float(((pred - y) ** 2).mean())
        snr = 10 * math.log10(float((y**2).mean()) / max(mse, 1e-12))
        grid = torch.linspace(-1, 1, 201)
        corners = torch.tensor([0.0, *SWITCH_POINTS, 1.0])
        xb = torch.stack([grid.repeat(len(corners)), corners.repeat_interleave(len(grid))], 1)
        yb = reference_shaper(xb[:, 0], xb[:, 1])[:, None]
        boundary_mse = float(((model(xb, xb[:, 1]) - yb) ** 2).mean())
    return {"test_mse": mse, "test_snr_db": snr, "boundary_mse": boundary_mse}


class LactoseTrainer:
    """Registry trainer ``"lactose"`` (``conditioned=False`` trains the baseline)."""

    name = "lactose"
    config_model: type[BaseModel] = LactoseConfig

    def train(self, config: BaseModel, progress: ProgressFn = no_progress) -> TrainResult:
        """Train on fresh audio each step; metrics: test MSE/SNR, boundary MSE, parameters."""
        if not isinstance(config, LactoseConfig):
            config = LactoseConfig.model_validate(config.model_dump())
        model = build_model(config)
        optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
        parallel = DataParallel.from_environment()  # torchrun: each rank a share of every batch
        parallel.attach(optimiser)
        gen = torch.Generator().manual_seed(config.seed)
        start = time.perf_counter()
        for step in range(config.steps):
            audio, drive = synth_clips(config.clips_per_step, config.clip_length, gen)
            x, c = parallel.shard_rows(*as_samples(audio, drive))
            loss = ((model(x, c)[:, 0] - reference_shaper(x[:, 0], c)) ** 2).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if step % 100 == 0:
                progress(step / config.steps, f"step {step}: loss {loss.item():.5f}")
        seconds = time.perf_counter() - start
        metrics = {
            **evaluate(model),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": seconds,
        }
        if isinstance(model, IntervalMLP):
            state = {"kind": "lactose", **model.state()}
        else:
            state = {
                "kind": "unconditioned",
                "sizes": [m.in_features for m in model.net if isinstance(m, torch.nn.Linear)] + [1],
                "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            }
        return TrainResult(state=state, metrics=metrics, config=config.model_dump())

    def load(self, state: dict[str, Any]) -> torch.nn.Module:
        """``model(x [N, 2], c [N]) -> [N, 1]`` for either kind."""
        if state.get("kind") == "unconditioned":
            model = Unconditioned(state["sizes"])
            model.load_state_dict(state["weights"])
            return model
        return IntervalMLP.from_state(state)


TRAINER = LactoseTrainer()
