"""Training the SecDOOD HyperNetwork H over simulated devices (the base model frozen).

Top to bottom:

1. load the frozen base model (``base_model_path``, else the latest registered
   ``secdood_base`` — the job runner passes trainers with ``needs_registry = True``
   its registry as ``train(..., registry=...)``);
2. embed, with the base model run as ``embedding`` says (LeanTTA by default: what a
   personalising device sends, :mod:`shared.embedding_adaptation`), the training devices
   — clean, the classic severity-5 devices, ``devices`` drawn from the *train* split of
   :mod:`shared.data.device_shifts` — and ``val_devices`` from the *validation* split;
3. per device, ``WINDOWS_PER_DEVICE`` random windows of ``window`` clips: each gives a
   description (the window mean u) and a channel ranking (SecDOOD importance), from
   which a mask is drawn the way a device draws it (top-α at α ∈ ``alphas``, or with
   probability ``random_mask_fraction`` a random mask);
4. ``device`` variant: a batch of devices, Θ = H(m ⊙ (u − r)) per device, loss =
   cross-entropy of every clip of that device under its Θ (full z) +
   ``global_penalty``·‖Θ − Θ_global‖² (so unfamiliar devices stay near the global
   head); Adam. The paper's ``one_m`` / ``two_m`` variants are trained per sample
   (u = the sample itself) as before;
5. report global vs personalised (α = 0.25) accuracy on the validation devices — the
   numbers every setting of this config is chosen on (never the test split).

The reference's AUROC surrogate needs outliers during training (MultiOOD's
prototype mixing); it is left out here, so H is trained for ID accuracy under shift.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.training.base import ProgressFn, TrainResult, no_progress
from server.training.data_parallel import ALONE, DataParallel
from server.training.device_embeddings import (
    DeviceSet,
    embed_clipset,
    embed_devices,
    shifted_clips,
    training_profiles,
)
from shared.channel_importance import channel_count, channel_importance, check_alpha
from shared.data.device_shifts import evaluation_profiles
from shared.data.digit_actions import DigitActionsConfig, load_split
from shared.embedding_adaptation import DEFAULT as DEFAULT_EMBEDDING
from shared.embedding_adaptation import EmbeddingAdaptation, adapted_model
from shared.familiarity import familiarity_reference
from shared.hypernet import (
    HyperNetwork,
    HyperNetworkConfig,
    Variant,
    hypernet_from_state,
    hypernet_state,
    personalised_logits,
)
from shared.model_names import BASE_MODEL as BASE_MODEL_NAME
from shared.model_names import HYPERNETWORK
from shared.models.checkpoint import ModelBundle, bundle_from_bytes, load_bundle

__all__ = ["embed_clipset", "shifted_clips"]  # re-exported for benchmarks

#: importance windows drawn per device to build its descriptions and masks
WINDOWS_PER_DEVICE = 16
#: the α the device uses by default; validation reports it
EVAL_ALPHA = 0.25


class HyperNetworkTrainConfig(BaseModel):
    """Hyperparameters of an H training run (validated; unknown keys rejected).

    Defaults were chosen on the validation split (docs/personalization.md).
    """

    model_config = ConfigDict(extra="forbid")

    base_model_path: str | None = None
    variant: Variant = "device"
    hidden_dim: int = Field(32, gt=0, le=4096)
    correction: Literal["theta", "bias"] = "theta"
    devices: int = Field(300, ge=0, le=2000)
    classic_devices: int = Field(8, ge=0, le=12)
    clips_per_device: int = Field(96, ge=32, le=3600)
    val_devices: int = Field(24, ge=0, le=200)
    val_clips_per_device: int = Field(96, ge=32, le=600)
    steps: int = Field(3000, gt=0, le=200_000)
    batch_devices: int = Field(32, gt=1, le=4096)
    batch_size: int = Field(256, gt=1, le=8192)
    lr: float = Field(3e-3, gt=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, lt=1)
    global_penalty: float = Field(1e-1, ge=0)
    alphas: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    random_mask_fraction: float = Field(0.25, ge=0, le=1)
    window: int = Field(64, ge=2, le=4096)
    eval_alpha: float = EVAL_ALPHA
    init_spread: float = Field(0.01, gt=0)
    seed: int = 0
    data_seed: int = 0
    threads: int = Field(2, gt=0, le=256)
    embedding: EmbeddingAdaptation = DEFAULT_EMBEDDING  # what H reads and devices send

    @field_validator("alphas")
    @classmethod
    def _alphas_in_range(cls, alphas: tuple[float, ...]) -> tuple[float, ...]:
        if not alphas:
            raise ValueError("alphas must not be empty")
        return tuple(check_alpha(a) for a in alphas)


def rank_positions(window: np.ndarray) -> np.ndarray:
    """Rank position of every channel of a window [W, D] (0 = most important)."""
    order = np.argsort(-channel_importance(window), kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    return position


def device_windows(
    z: torch.Tensor, window: int, count: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random windows per device of z [M, N, D] → (means [M, count, D] float32,
    rank positions [M, count, D] int64)."""
    means, positions = [], []
    for zd in z.numpy():
        rows = [rng.choice(len(zd), size=min(window, len(zd)), replace=False) for _ in range(count)]
        means.append(np.stack([zd[r].mean(0) for r in rows]))
        positions.append(np.stack([rank_positions(zd[r]) for r in rows]))
    return torch.as_tensor(np.stack(means)), torch.as_tensor(np.stack(positions))


def draw_masks(
    positions: torch.Tensor,
    alphas: tuple[float, ...],
    random_fraction: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """A float mask [N, D] per row of rank positions [N, D]: top-α, or a random mask."""
    n, d = positions.shape
    counts = torch.tensor([channel_count(a, d) for a in alphas])
    k = counts[torch.randint(len(alphas), (n,), generator=generator)]
    random_position = torch.rand(n, d, generator=generator).argsort(1).argsort(1)
    use_random = torch.rand(n, generator=generator) < random_fraction
    position = torch.where(use_random[:, None], random_position, positions)
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


def collect_devices(
    config: HyperNetworkTrainConfig, bundle: ModelBundle, progress: ProgressFn = no_progress
) -> tuple[DeviceSet, DeviceSet | None]:
    """Embed the training devices (train clips) and validation devices (val clips)."""
    data = DigitActionsConfig(seed=config.data_seed)
    profiles = training_profiles(config.devices, config.classic_devices, config.data_seed)
    model = adapted_model(bundle.model, config.embedding)
    train = embed_devices(
        model,
        load_split("train", data),
        profiles,
        config.clips_per_device,
        seed=config.data_seed,
        progress=progress,
        progress_span=(0.0, 0.45),
    )
    val = None
    if config.val_devices:
        val_profiles = evaluation_profiles("val", config.val_devices, seed=config.data_seed)
        val = embed_devices(
            model,
            load_split("val", data),
            val_profiles,
            config.val_clips_per_device,
            seed=config.data_seed + 1,
            progress=progress,
            progress_span=(0.45, 0.5),
        )
    return train, val


def new_hypernetwork(config: HyperNetworkTrainConfig, bundle: ModelBundle) -> HyperNetwork:
    """H at the global head, with the training devices' mean as reference (``device``)."""
    head = bundle.model.fused_head
    model = HyperNetwork(
        HyperNetworkConfig(
            embed_dim=bundle.config.embed_dim,
            num_classes=bundle.config.num_classes,
            variant=config.variant,
            hidden_dim=config.hidden_dim,
            correction=config.correction,
        )
    )
    model.init_from_head(
        head.weight.detach().clone(), head.bias.detach().clone(), config.init_spread
    )
    return model


def _device_step(
    model: HyperNetwork,
    train: DeviceSet,
    means: torch.Tensor,
    positions: torch.Tensor,
    config: HyperNetworkTrainConfig,
    generator: torch.Generator,
    parallel: DataParallel = ALONE,
) -> torch.Tensor:
    """Loss of one batch of devices, one Θ per device from one of its windows."""
    m, count = means.shape[0], means.shape[1]
    devices = torch.randint(m, (config.batch_devices,), generator=generator)
    window = torch.randint(count, (config.batch_devices,), generator=generator)
    mask = draw_masks(
        positions[devices, window], config.alphas, config.random_mask_fraction, generator
    )
    devices, window, mask = parallel.shard_rows(devices, window, mask)  # torchrun: this rank's
    theta = model.theta(model.masked_input(means[devices, window], mask))
    kernel_size = model.config.embed_dim * model.config.num_classes
    kernel = theta[:, :kernel_size].view(len(devices), model.config.embed_dim, -1)
    logits = torch.einsum("bnd,bdc->bnc", train.z[devices], kernel) + theta[:, None, kernel_size:]
    loss = F.cross_entropy(logits.flatten(0, 1), train.y[devices].flatten())
    drift = (theta - model.head_theta).pow(2).sum(1).mean()
    return loss + config.global_penalty * drift


def _sample_step(
    model: HyperNetwork,
    train: DeviceSet,
    positions: torch.Tensor,
    config: HyperNetworkTrainConfig,
    generator: torch.Generator,
    parallel: DataParallel = ALONE,
) -> torch.Tensor:
    """Loss of one batch of samples (the paper's per-sample H: u = the sample itself)."""
    m, n, _ = train.z.shape
    device = torch.randint(m, (config.batch_size,), generator=generator)
    clip = torch.randint(n, (config.batch_size,), generator=generator)
    window = torch.randint(positions.shape[1], (config.batch_size,), generator=generator)
    mask = draw_masks(
        positions[device, window], config.alphas, config.random_mask_fraction, generator
    )
    device, clip, mask = parallel.shard_rows(device, clip, mask)  # torchrun: this rank's
    z = train.z[device, clip]
    theta = model.theta(model.masked_input(z, mask))
    return F.cross_entropy(
        personalised_logits(z, theta, model.config.num_classes), train.y[device, clip]
    )


@torch.no_grad()
def evaluate_devices(
    model: HyperNetwork,
    bundle: ModelBundle,
    devices: DeviceSet,
    window: int,
    alpha: float = EVAL_ALPHA,
) -> list[dict[str, Any]]:
    """Per device: ID accuracy of the global head and of H's Θ (per-device mode, top-α).

    The description is the mean of the device's first ``window`` clips; accuracy is over
    all its clips. The paper's per-sample variants get one Θ per clip instead.
    """
    head = bundle.model.fused_head
    weight, bias = head.weight.detach(), head.bias.detach()
    c = model.config.num_classes
    rows = []
    for profile, z, y in zip(devices.profiles, devices.z, devices.y, strict=True):
        recent = z[:window]
        keep = rank_positions(recent.numpy()) < channel_count(alpha, z.shape[1])
        mask = torch.as_tensor(keep, dtype=z.dtype)
        if model.config.variant == "device":
            theta = model.theta(model.masked_input(recent.mean(0, keepdim=True), mask[None]))[0]
        else:
            theta = model.theta(model.masked_input(z, mask.expand_as(z)))
        personal = float((personalised_logits(z, theta, c).argmax(1) == y).float().mean())
        rows.append(
            {
                "device": profile.name,
                "global": float(((z @ weight.T + bias).argmax(1) == y).float().mean()),
                "personalised": personal,
            }
        )
    return rows


def fit_hypernetwork(
    config: HyperNetworkTrainConfig,
    bundle: ModelBundle,
    train: DeviceSet,
    val: DeviceSet | None = None,
    progress: ProgressFn = no_progress,
) -> tuple[HyperNetwork, dict[str, Any]]:
    """Train H on precomputed device embeddings; returns (eval-mode H, metrics)."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    means, positions = device_windows(train.z, config.window, WINDOWS_PER_DEVICE, rng)
    model = new_hypernetwork(config, bundle)
    model.embedding = config.embedding  # ``train`` must hold embeddings of this kind
    if config.variant == "device":
        model.set_reference(means.mean((0, 1)))
        # what the device measures its own window mean against (shared.familiarity)
        model.familiarity = familiarity_reference(train.z.double().mean(1).numpy())
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    parallel = DataParallel.from_environment()  # torchrun: each rank a share of every batch
    parallel.attach(optimiser)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    recent = []
    for step in range(config.steps):
        if config.variant == "device":
            loss = _device_step(model, train, means, positions, config, generator, parallel)
        else:
            loss = _sample_step(model, train, positions, config, generator, parallel)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        recent = [*recent[-99:], float(loss.detach())]
        if (step + 1) % max(1, config.steps // 20) == 0:
            progress(
                0.5 + 0.5 * (step + 1) / config.steps,
                f"step {step + 1}: loss {np.mean(recent):.4f}",
            )
    model.eval()
    metrics: dict[str, Any] = {
        "train_loss": float(np.mean(recent)),
        "train_devices": len(train.profiles),
    }
    if val is not None:
        rows = evaluate_devices(model, bundle, val, config.window, check_alpha(config.eval_alpha))
        deltas = [r["personalised"] - r["global"] for r in rows]
        metrics |= {
            "val_devices": len(rows),
            "val_per_device": rows,
            "val_accuracy_global": float(np.mean([r["global"] for r in rows])),
            "val_accuracy_personalised": float(np.mean([r["personalised"] for r in rows])),
            "val_worst_delta": float(min(deltas)),
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
    train, val = collect_devices(config, bundle, progress)
    model, metrics = fit_hypernetwork(config, bundle, train, val, progress)
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    accuracy = metrics.get("val_accuracy_personalised", float("nan"))
    progress(1.0, f"done: val accuracy {accuracy:.3f}")
    return model, metrics


class HyperNetworkTrainer:
    """H as a registered method (``secdood-server train --method hypernetwork``).

    ``needs_registry``: the job runner passes its registry to ``train`` so that,
    without ``base_model_path``, the latest registered ``secdood_base`` is used.
    """

    name = HYPERNETWORK
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
