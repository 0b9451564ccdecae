"""Training the SecDOOD HyperNetwork H over simulated shifted devices (the base model frozen).

Top to bottom:

1. load the frozen base model (``base_model_path``, else the latest registered
   ``secdood_base`` — the job runner passes trainers with ``needs_registry = True``
   its registry as ``train(..., registry=...)``);
2. embed ``clips_per_device`` ID training clips as seen by ``devices`` simulated
   devices (each its own camera corruption at severity 5, :func:`device_shift`) plus
   a clean device — embeddings are computed once and kept in memory;
3. per sample draw a channel mask the way a device would: top-α by channel importance
   over a random window of that device's embeddings at α ∈ ``alphas``, or (with
   probability ``random_mask_fraction``) a random mask; H sees z ⊙ mask;
4. loss = cross-entropy of the personalised logits z·kernel + bias with the *full* z;
   Adam. H starts at the global head (:meth:`HyperNetwork.init_from_head`);
5. validate on held-out clips of every device: global head vs personalised (α = 0.25).

The reference's AUROC surrogate needs outliers during training (MultiOOD's
prototype mixing); it is left out here, so H is trained for ID accuracy under shift.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.methods.base import ProgressFn, TrainResult, no_progress
from shared.channel_importance import channel_count, channel_importance, check_alpha
from shared.data.clipset import ClipSet
from shared.data.corruptions import corrupt_clipset, device_shift
from shared.data.digit_actions import DigitActionsConfig, load_split
from shared.data.tensors import flow_to_tensor, frames_to_tensor
from shared.hypernet import (
    HyperNetwork,
    HyperNetworkConfig,
    hypernet_from_state,
    hypernet_state,
    personalised_logits,
)
from shared.models.checkpoint import ModelBundle, bundle_from_bytes, load_bundle
from shared.models.two_stream import TwoStreamNet

BASE_MODEL_NAME = "secdood_base"
#: importance windows drawn per device to build its masks
WINDOWS_PER_DEVICE = 16


class HyperNetworkTrainConfig(BaseModel):
    """Hyperparameters of an H training run (validated; unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid")

    base_model_path: str | None = None
    variant: Literal["one_m", "two_m"] = "one_m"
    hidden_dim: int = Field(64, gt=0, le=4096)
    devices: int = Field(8, ge=1, le=24)
    clips_per_device: int = Field(900, ge=32, le=3600)
    val_clips_per_device: int = Field(300, ge=32, le=600)
    epochs: int = Field(40, gt=0, le=1000)
    batch_size: int = Field(256, gt=1, le=8192)
    lr: float = Field(1e-3, gt=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, lt=1)
    alphas: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    random_mask_fraction: float = Field(0.25, ge=0, le=1)
    window: int = Field(64, ge=2, le=4096)
    init_spread: float = Field(0.01, gt=0)
    seed: int = 0
    data_seed: int = 0
    threads: int = Field(2, gt=0, le=256)

    @field_validator("alphas")
    @classmethod
    def _alphas_in_range(cls, alphas: tuple[float, ...]) -> tuple[float, ...]:
        if not alphas:
            raise ValueError("alphas must not be empty")
        return tuple(check_alpha(a) for a in alphas)


def device_shifts(devices: int) -> list[tuple[str, int]]:
    """The simulated devices: clean ("", 0) first, then ``devices`` distinct corruptions."""
    shifts = [device_shift(i) for i in range(devices)]
    return [("", 0)] + [(s.corruption, s.severity) for s in shifts]


def shifted_clips(clips: ClipSet, corruption: str, severity: int, seed: int) -> ClipSet:
    """The clips as a device with that camera shift sees them ("" = clean)."""
    return clips if not corruption else corrupt_clipset(clips, corruption, severity, seed)


@torch.inference_mode()
def embed_clipset(model: TwoStreamNet, clips: ClipSet, batch_size: int = 256) -> torch.Tensor:
    """Fused embeddings z [N, D] of a clip set with the frozen base model."""
    model.eval()
    out = [
        model.embed(
            frames_to_tensor(clips.frames[start : start + batch_size]),
            flow_to_tensor(clips.flow[start : start + batch_size]),
        )
        for start in range(0, len(clips), batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, model.config.embed_dim)


def device_rankings(
    z: torch.Tensor, window: int, count: int, rng: np.random.Generator
) -> torch.Tensor:
    """Rank position of every channel (0 = most important) for ``count`` random windows.

    Returns int64 [count, D]; a mask at α keeps channels with position < round(α·D).
    """
    positions = []
    for _ in range(count):
        rows = rng.choice(len(z), size=min(window, len(z)), replace=False)
        order = np.argsort(-channel_importance(z[rows].numpy()), kind="stable")
        position = np.empty_like(order)
        position[order] = np.arange(order.size)
        positions.append(position)
    return torch.as_tensor(np.stack(positions), dtype=torch.long)


def draw_masks(
    device: torch.Tensor,
    rankings: torch.Tensor,
    alphas: tuple[float, ...],
    random_fraction: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """A float mask [N, D] per sample: top-α of one of its device's windows, or random."""
    n, d = device.shape[0], rankings.shape[2]
    counts = torch.tensor([channel_count(a, d) for a in alphas])
    k = counts[torch.randint(len(alphas), (n,), generator=generator)]
    window = torch.randint(rankings.shape[1], (n,), generator=generator)
    position = rankings[device, window]
    random_position = torch.rand(n, d, generator=generator).argsort(1).argsort(1)
    use_random = torch.rand(n, generator=generator) < random_fraction
    position = torch.where(use_random[:, None], random_position, position)
    return (position < k[:, None]).float()


def _base_bundle(config: HyperNetworkTrainConfig, registry: Any) -> tuple[ModelBundle, str]:
    if config.base_model_path is not None:
        bundle = load_bundle(config.base_model_path)
        return bundle, ""
    if registry is None:
        raise ValueError(
            "no base model: set base_model_path, or run through the job runner "
            "(which gives this trainer the registry) after training secdood_base"
        )
    record = registry.latest_model(BASE_MODEL_NAME)
    return bundle_from_bytes(registry.artifacts.read_bytes(record.artifact_sha256)), (
        record.artifact_sha256
    )


@dataclass
class DeviceEmbeddings:
    """Embeddings of the simulated devices, computed once: per device z [N_i, D] and y [N_i]."""

    shifts: list[tuple[str, int]]
    train_z: list[torch.Tensor]
    train_y: list[torch.Tensor]
    val_z: list[torch.Tensor]
    val_y: list[torch.Tensor]


def collect_device_embeddings(
    config: HyperNetworkTrainConfig, bundle: ModelBundle, progress: ProgressFn = no_progress
) -> DeviceEmbeddings:
    """Embed the same train/val clip subsets as every simulated device sees them."""
    rng = np.random.default_rng(config.data_seed)
    data = DigitActionsConfig(seed=config.data_seed)
    train_all, val_all = load_split("train", data), load_split("val", data)
    train_clips = train_all.subset(rng.permutation(len(train_all))[: config.clips_per_device])
    val_clips = val_all.subset(rng.permutation(len(val_all))[: config.val_clips_per_device])
    shifts = device_shifts(config.devices)
    out = DeviceEmbeddings(shifts, [], [], [], [])
    for index, (corruption, severity) in enumerate(shifts):
        progress(0.5 * index / len(shifts), f"embedding device {index} ({corruption or 'clean'})")
        for clips, zs, ys, seed in (
            (train_clips, out.train_z, out.train_y, 1000 + index),
            (val_clips, out.val_z, out.val_y, 2000 + index),
        ):
            zs.append(embed_clipset(bundle.model, shifted_clips(clips, corruption, severity, seed)))
            ys.append(torch.as_tensor(clips.labels))
    return out


def fit_hypernetwork(
    config: HyperNetworkTrainConfig,
    bundle: ModelBundle,
    embeddings: DeviceEmbeddings,
    progress: ProgressFn = no_progress,
) -> tuple[HyperNetwork, dict[str, Any]]:
    """Train H on precomputed device embeddings; returns (eval-mode H, metrics)."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    z = torch.cat(embeddings.train_z).clone()
    y = torch.cat(embeddings.train_y)
    dev = torch.cat([torch.full((len(zd),), i) for i, zd in enumerate(embeddings.train_z)])
    rankings = torch.stack(
        [device_rankings(zd, config.window, WINDOWS_PER_DEVICE, rng) for zd in embeddings.train_z]
    )
    head = bundle.model.fused_head
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
    c = bundle.config.num_classes
    model = HyperNetwork(
        HyperNetworkConfig(
            embed_dim=bundle.config.embed_dim,
            num_classes=c,
            variant=config.variant,
            hidden_dim=config.hidden_dim,
        )
    )
    model.init_from_head(weight, bias, config.init_spread)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    total = 0.0
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(z), generator=generator)
        total = 0.0
        for start in range(0, len(z), config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < 2:
                continue  # BatchNorm needs two samples
            mask = draw_masks(
                dev[batch], rankings, config.alphas, config.random_mask_fraction, generator
            )
            theta = model.theta(z[batch] * mask)
            loss = F.cross_entropy(personalised_logits(z[batch], theta, c), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        progress(
            0.5 + 0.5 * (epoch + 1) / config.epochs,
            f"epoch {epoch + 1}: loss {total / len(z):.4f}",
        )
    model.eval()

    per_device = {}
    with torch.no_grad():
        for index, (corruption, _severity) in enumerate(embeddings.shifts):
            zv, yv = embeddings.val_z[index].clone(), embeddings.val_y[index]
            global_acc = float(((zv @ weight.T + bias).argmax(1) == yv).float().mean())
            rank = device_rankings(zv, config.window, 1, rng)[0]
            theta = model.theta(zv * (rank < channel_count(0.25, zv.shape[1])).float())
            personal = float((personalised_logits(zv, theta, c).argmax(1) == yv).float().mean())
            per_device[corruption or "clean"] = {
                "global": global_acc,
                "personalised_0.25": personal,
            }
    metrics: dict[str, Any] = {
        "train_loss": total / len(z),
        "devices": len(embeddings.shifts),
        "val_per_device": per_device,
        "val_accuracy_global": float(np.mean([v["global"] for v in per_device.values()])),
        "val_accuracy_personalised": float(
            np.mean([v["personalised_0.25"] for v in per_device.values()])
        ),
    }
    return model, metrics


def train_hypernetwork(
    config: HyperNetworkTrainConfig,
    bundle: ModelBundle,
    progress: ProgressFn = no_progress,
) -> tuple[HyperNetwork, dict[str, Any]]:
    """Embed the simulated devices, then train H; returns (eval-mode H, metrics)."""
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    embeddings = collect_device_embeddings(config, bundle, progress)
    model, metrics = fit_hypernetwork(config, bundle, embeddings, progress)
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    progress(1.0, f"done: val accuracy {metrics['val_accuracy_personalised']:.3f}")
    return model, metrics


class HyperNetworkTrainer:
    """H as a registered method (``secdood-server train --method hypernetwork``).

    ``needs_registry``: the job runner passes its registry to ``train`` so that,
    without ``base_model_path``, the latest registered ``secdood_base`` is used.
    """

    name = "hypernetwork"
    config_model = HyperNetworkTrainConfig
    needs_registry = True

    def train(
        self, config: BaseModel, progress: ProgressFn = no_progress, registry: Any = None
    ) -> TrainResult:
        assert isinstance(config, HyperNetworkTrainConfig)
        bundle, base_sha = _base_bundle(config, registry)
        model, metrics = train_hypernetwork(config, bundle, progress)
        return TrainResult(
            state=hypernet_state(model, base_sha),
            metrics=metrics,
            config=config.model_dump(mode="json"),
        )

    def load(self, state: dict[str, Any]) -> HyperNetwork:
        return hypernet_from_state(state)


TRAINER = HyperNetworkTrainer()
