"""Train the two-stream base model on digit-actions clips (DESIGN §4).

Reads top to bottom: load data → build model → train with cross-entropy on the
fused, RGB and flow heads → compute reference ID features → calibrate every
detector's threshold at 95 % ID acceptance on validation clips → bundle.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from server.training.base import ProgressFn, TrainResult, no_progress
from server.training.data_parallel import DataParallel
from shared.data.actions import ID_ACTIONS
from shared.data.digit_actions import ClipSet, DigitActionsConfig, load_split
from shared.data.tensors import flow_to_tensor, frames_to_tensor
from shared.model_names import BASE_MODEL
from shared.models.checkpoint import ModelBundle, bundle_from_bytes, bundle_to_bytes
from shared.models.two_stream import TwoStreamConfig, TwoStreamNet
from shared.ood.base import Evidence, LinearHead
from shared.ood.metrics import accuracy, calibrate_threshold
from shared.ood.registry import DETECTORS, make_detector

#: how many ID training embeddings the artifact keeps for fitting detectors
REFERENCE_SIZE = 2000


class DataConfig(BaseModel):
    """Which digit-actions clips to train on (clip counts per class / action / split)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    train_per_class: int = Field(600, gt=0)
    val_per_class: int = Field(100, gt=0)
    test_per_class: int = Field(150, gt=0)
    ood_per_action: int = Field(150, gt=0)
    far_count: int = Field(600, gt=0)

    def digit_actions(self) -> DigitActionsConfig:
        return DigitActionsConfig(**self.model_dump())


class BaseModelConfig(BaseModel):
    """Hyperparameters of a base-model training run (validated; unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(5, gt=0, le=500)
    batch_size: int = Field(64, gt=0, le=4096)
    lr: float = Field(2e-3, gt=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, lt=1)
    seed: int = 0
    embed_dim: int = Field(128, gt=1, le=4096)
    widths: tuple[int, int, int] = (16, 32, 64)
    data: DataConfig = Field(default_factory=DataConfig)
    threads: int = Field(2, gt=0, le=256)


def _tensors(clips: ClipSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        frames_to_tensor(clips.frames),
        flow_to_tensor(clips.flow),
        torch.as_tensor(clips.labels, dtype=torch.long),
    )


@torch.inference_mode()
def embed_and_logits(
    model: TwoStreamNet, rgb: torch.Tensor, flow: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused embeddings and fused-head logits for a whole set, in eval mode."""
    model.eval()
    zs, logits = [], []
    for start in range(0, len(rgb), batch_size):
        out = model.forward_all(rgb[start : start + batch_size], flow[start : start + batch_size])
        zs.append(out.z)
        logits.append(out.logits)
    return torch.cat(zs), torch.cat(logits)


def calibrate_thresholds(
    head: LinearHead, reference: Evidence, labels: torch.Tensor, validation: Evidence
) -> dict[str, float]:
    """Per detector: the score that accepts 95 % of ID validation clips."""
    thresholds = {}
    for name in sorted(DETECTORS):
        detector = make_detector(name).fit(reference, labels, head)
        thresholds[name] = calibrate_threshold(detector.score(validation).numpy(), 0.95)
    return thresholds


def train_base_model(config: BaseModelConfig, progress: ProgressFn = no_progress) -> ModelBundle:
    """Train, calibrate and bundle the default two-stream model."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        data_config = config.data.digit_actions()
        progress(0.0, "loading digit-actions clips (generated and cached on first use)")
        train_rgb, train_flow, train_y = _tensors(load_split("train", data_config))
        val_rgb, val_flow, val_y = _tensors(load_split("val", data_config))

        model = TwoStreamNet(
            TwoStreamConfig(
                num_classes=len(ID_ACTIONS),
                embed_dim=config.embed_dim,
                widths=config.widths,
                n_frames=data_config.n_frames,
                size=data_config.size,
            )
        )
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        steps_per_epoch = (len(train_y) + config.batch_size - 1) // config.batch_size
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
        )
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(config.seed)
        parallel = DataParallel.from_environment()  # torchrun: DDP over the ranks
        forward_all = parallel.wrap(model, "forward_all")
        started = time.perf_counter()
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(len(train_y), generator=generator)
            for step, start in enumerate(range(0, len(order), config.batch_size)):
                idx = parallel.shard(order[start : start + config.batch_size])
                out = forward_all(train_rgb[idx], train_flow[idx])
                y = train_y[idx]
                # Mean of the fused, RGB and flow cross-entropies (each head must stand alone).
                loss = (
                    loss_fn(out.logits, y)
                    + loss_fn(out.rgb_logits, y)
                    + loss_fn(out.flow_logits, y)
                ) / 3
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                done = (epoch * steps_per_epoch + step + 1) / (config.epochs * steps_per_epoch)
                progress(0.9 * done, f"epoch {epoch + 1}/{config.epochs} loss {loss.item():.4f}")
        train_seconds = time.perf_counter() - started

        progress(0.92, "computing reference features and calibrating thresholds")
        ref_idx = torch.randperm(len(train_y), generator=generator)[:REFERENCE_SIZE]
        ref_z, ref_logits = embed_and_logits(model, train_rgb[ref_idx], train_flow[ref_idx])
        ref_y = train_y[ref_idx]
        val_z, val_logits = embed_and_logits(model, val_rgb, val_flow)
        head = LinearHead(model.fused_head.weight.detach(), model.fused_head.bias.detach())
        thresholds = calibrate_thresholds(
            head, Evidence(ref_z, ref_logits), ref_y, Evidence(val_z, val_logits)
        )
        metrics = {
            "val_accuracy": accuracy(val_logits, val_y),
            "train_accuracy": accuracy(ref_logits, ref_y),
            "train_seconds": round(train_seconds, 2),
        }
        progress(1.0, f"done: validation accuracy {metrics['val_accuracy']:.4f}")
        return ModelBundle(
            model=model.eval(),
            classes=list(ID_ACTIONS),
            reference_features=ref_z,
            reference_logits=ref_logits,
            reference_labels=ref_y,
            thresholds=thresholds,
            metrics=metrics,
            train_config=config.model_dump(mode="json"),
        )
    finally:
        torch.set_num_threads(previous_threads)


class BaseModelTrainer:
    """The base model as a registered method (``secdood-server train --method secdood_base``)."""

    name = BASE_MODEL
    config_model = BaseModelConfig

    def train(self, config: BaseModel, progress: ProgressFn = no_progress) -> TrainResult:
        assert isinstance(config, BaseModelConfig)
        bundle = train_base_model(config, progress)
        artifact = bundle_to_bytes(bundle)
        return TrainResult(
            state={"artifact": artifact},
            metrics=bundle.metrics,
            config=config.model_dump(mode="json"),
            artifact=artifact,
        )

    def load(self, state: dict[str, Any]) -> ModelBundle:
        return bundle_from_bytes(state["artifact"])


TRAINER = BaseModelTrainer()
