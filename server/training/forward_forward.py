"""Trainers: FF-SNN (Forward-Forward spiking net) and its two baselines, FF and BP-SNN.

* ``ff_snn`` — LIF layers trained layer-locally with the Forward-Forward rule
  (arXiv 2502.20411): positive = image + true one-hot label, negative = image +
  a wrong label; per layer ``loss = softplus(k(θ - g_pos)) + softplus(k(g_neg - θ))``
  with goodness ``g`` = mean squared spike rate. The surrogate gradient runs
  through time *within* a layer only; each layer's input is detached.
* ``ff`` — Hinton's (2022) non-spiking Forward-Forward net, ReLU layers, same scheme.
* ``bp_snn`` — the same LIF layers plus a softmax readout on spike rates, trained
  end to end by backpropagation through time (surrogate gradients).

All three train on sklearn's 8x8 digits (see :func:`load_digits_split`).
Inference lives in :mod:`shared.methods.forward_forward`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import accuracy_score
from torch import nn

from server.training.base import ProgressFn, TrainResult, no_progress
from server.training.data_parallel import DataParallel
from shared.methods.digits import DigitsSplit, load_digits_split
from shared.methods.forward_forward import (
    NUM_CLASSES,
    NUM_FEATURES,
    BPSpikingNet,
    BPSpikingPredictor,
    FFReLUNet,
    FFSpikingNet,
    ForwardForwardPredictor,
    embed_label,
    label_goodness,
)
from shared.methods.spiking import encode

# ---------------------------------------------------------------- configs

PositiveSize = Annotated[int, Field(gt=0)]


class _CommonConfig(BaseModel):
    """Fields every trainer here shares."""

    model_config = ConfigDict(extra="forbid")

    hidden_sizes: list[PositiveSize] = Field(default=[500, 500], min_length=1)
    epochs: int = Field(default=30, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, gt=0)
    time_steps: int = Field(default=10, gt=0, description="simulation steps per sample")
    encoding: Literal["static", "poisson", "latency"] = Field(
        default="static",
        description="static: same analogue current every step; poisson: Bernoulli rate code; "
        "latency: one spike, earlier for brighter pixels",
    )
    seed: int = Field(default=0, ge=0)


class _LIFConfig(BaseModel):
    """LIF neuron parameters."""

    beta: float = Field(default=0.9, gt=0, le=1, description="membrane decay per step")
    threshold: float = Field(default=1.0, gt=0, description="firing threshold")
    slope: float = Field(default=5.0, gt=0, description="fast-sigmoid surrogate slope")


class _FFRuleConfig(BaseModel):
    """Forward-Forward rule parameters."""

    goodness_threshold: float = Field(default=0.1, gt=0, description="θ in the softplus loss")
    sharpness: float = Field(default=30.0, gt=0, description="k in the softplus loss")
    loss: Literal["threshold", "contrast"] = Field(
        default="threshold",
        description="threshold: softplus(k(θ - g_pos)) + softplus(k(g_neg - θ)) (Hinton); "
        "contrast: softplus(k(g_neg - g_pos)) (no θ; SymBa-style)",
    )
    negatives: Literal["random", "hard"] = Field(
        default="random", description="wrong label drawn uniformly, or the best-scoring wrong one"
    )
    skip_first_layer: bool = Field(
        default=False, description="leave layer 1 out of the summed goodness at prediction"
    )


class FFSNNConfig(_CommonConfig, _LIFConfig, _FFRuleConfig):
    """Config of ``ff_snn`` (defaults tuned on digits, Poisson coding; see docs)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(default=3e-3, gt=0)


class FFConfig(_CommonConfig, _FFRuleConfig):
    """Config of ``ff`` (ReLU goodness is unbounded, hence a larger θ and smaller k)."""

    model_config = ConfigDict(extra="forbid")

    goodness_threshold: float = Field(default=2.0, gt=0, description="θ in the softplus loss")
    sharpness: float = Field(default=1.0, gt=0, description="k in the softplus loss")
    lr: float = Field(default=3e-3, gt=0)


class BPSNNConfig(_CommonConfig, _LIFConfig):
    """Config of ``bp_snn``."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- training helpers


def forward_forward_loss(
    goodness_pos: torch.Tensor,
    goodness_neg: torch.Tensor,
    threshold: float,
    sharpness: float,
    kind: str = "threshold",
) -> torch.Tensor:
    """Layer-local loss, batch mean; ``g`` are per-sample goodness values ``[N]``.

    ``threshold``: ``softplus(k(θ - g_pos)) + softplus(k(g_neg - θ))`` (-log σ on both sides);
    ``contrast``: ``softplus(k(g_neg - g_pos))``, pushing the pair apart with no absolute θ.
    """
    if kind == "contrast":
        return nn.functional.softplus(sharpness * (goodness_neg - goodness_pos)).mean()
    if kind != "threshold":
        raise ValueError(f"loss must be 'threshold' or 'contrast', got {kind!r}")
    return (
        nn.functional.softplus(sharpness * (threshold - goodness_pos))
        + nn.functional.softplus(sharpness * (goodness_neg - threshold))
    ).mean()


def wrong_labels(
    labels: torch.Tensor, generator: torch.Generator, scores: torch.Tensor | None = None
) -> torch.Tensor:
    """A wrong label per sample: uniform over the C - 1 others, or argmax of ``scores`` [N, C]."""
    if scores is None:
        shift = torch.randint(1, NUM_CLASSES, labels.shape, generator=generator)
        return (labels + shift) % NUM_CLASSES
    masked = scores.clone()
    masked[torch.arange(labels.shape[0]), labels] = -torch.inf
    return masked.argmax(dim=1)


def forward_forward_step(
    net: FFSpikingNet,
    optimisers: list[torch.optim.Optimizer],
    positive: torch.Tensor,
    negative: torch.Tensor,
    threshold: float,
    sharpness: float,
    loss_kind: str = "threshold",
) -> list[float]:
    """One layer-local update of every layer on a batch; returns each layer's loss.

    ``positive`` / ``negative`` are label-embedded ``[T, N, C + D]``. Layer l's
    loss is backpropagated into layer l only (its input is detached inside
    ``layer_forward``), then layer l's output feeds layer l + 1.
    """
    losses = []
    for index, optimiser in enumerate(optimisers):
        out_pos = net.layer_forward(index, positive)
        out_neg = net.layer_forward(index, negative)
        loss = forward_forward_loss(
            net.goodness(out_pos), net.goodness(out_neg), threshold, sharpness, loss_kind
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        positive, negative = out_pos.detach(), out_neg.detach()
    return losses


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


def _encode_epoch(
    x: torch.Tensor, encoding: str, time_steps: int, generator: torch.Generator
) -> torch.Tensor:
    """Encoded training set ``[T, N, D]``; Poisson spikes are re-drawn each epoch."""
    return encode(x, encoding, time_steps, generator)


def _accuracy(predictor: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(accuracy_score(y, predictor.predict(x)))


def _finish(
    state: dict[str, Any],
    config: BaseModel,
    predictor: Any,
    data: DigitsSplit,
    seconds: float,
    losses: list[float],
) -> TrainResult:
    metrics = {
        "test_accuracy": _accuracy(predictor, data.x_test, data.y_test),
        "train_accuracy": _accuracy(predictor, data.x_train, data.y_train),
        "train_seconds": seconds,
        "final_loss": float(np.mean(losses)) if losses else float("nan"),
    }
    return TrainResult(state=state, metrics=metrics, config=config.model_dump())


# ---------------------------------------------------------------- trainers


class _ForwardForwardTrainer:
    """Shared training loop of ``ff_snn`` and ``ff``; they differ only in the layer type."""

    name: str
    config_model: type[BaseModel]

    def _build(self, config: Any) -> FFSpikingNet:
        raise NotImplementedError

    def _state(self, config: Any, net: FFSpikingNet) -> dict[str, Any]:
        return {
            "kind": self.name,
            "num_classes": NUM_CLASSES,
            "num_features": NUM_FEATURES,
            "hidden_sizes": list(config.hidden_sizes),
            "time_steps": config.time_steps,
            "encoding": config.encoding,
            "seed": config.seed,
            "skip_first_layer": config.skip_first_layer,
            "beta": getattr(config, "beta", 1.0),
            "threshold": getattr(config, "threshold", 1.0),
            "slope": getattr(config, "slope", 1.0),
            "weights": {k: v.detach().clone() for k, v in net.state_dict().items()},
        }

    def train(self, config: BaseModel, progress: ProgressFn = no_progress) -> TrainResult:
        """Train on the digits split; metrics: test/train accuracy, train seconds."""
        if not isinstance(config, self.config_model):
            raise TypeError(f"{self.name} needs a {self.config_model.__name__}, got {type(config)}")
        cfg: Any = config
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        data = load_digits_split()
        x_train = torch.from_numpy(data.x_train)
        y_train = torch.from_numpy(data.y_train)
        net = self._build(cfg)
        optimisers = [torch.optim.Adam(layer.parameters(), lr=cfg.lr) for layer in net.layers]
        parallel = DataParallel.from_environment()  # torchrun: each rank a share of every batch
        for optimiser in optimisers:
            parallel.attach(optimiser)
        # a ReLU net sees identical static frames: one frame is enough
        steps = 1 if (self.name == "ff" and cfg.encoding == "static") else cfg.time_steps
        start = time.perf_counter()
        losses: list[float] = []
        encoded = _encode_epoch(x_train, cfg.encoding, steps, generator)
        for epoch in range(cfg.epochs):
            if cfg.encoding == "poisson" and epoch > 0:
                encoded = _encode_epoch(x_train, cfg.encoding, steps, generator)
            losses = []
            for batch in _batches(len(y_train), cfg.batch_size, generator):
                inputs, labels = encoded[:, batch], y_train[batch]
                scores = None
                if cfg.negatives == "hard":
                    scores = label_goodness(net, inputs, NUM_CLASSES, cfg.skip_first_layer)
                negatives = wrong_labels(labels, generator, scores)
                rows = parallel.shard(torch.arange(len(labels)))  # drawn whole, trained shared
                inputs, labels, negatives = inputs[:, rows], labels[rows], negatives[rows]
                losses.append(
                    sum(
                        forward_forward_step(
                            net,
                            optimisers,
                            embed_label(inputs, labels, NUM_CLASSES),
                            embed_label(inputs, negatives, NUM_CLASSES),
                            cfg.goodness_threshold,
                            cfg.sharpness,
                            cfg.loss,
                        )
                    )
                )
            progress(
                (epoch + 1) / cfg.epochs,
                f"epoch {epoch + 1}/{cfg.epochs} loss {np.mean(losses):.4f}",
            )
        seconds = time.perf_counter() - start
        state = self._state(cfg, net)
        return _finish(state, cfg, self.load(state), data, seconds, losses)

    def load(self, state: dict[str, Any]) -> ForwardForwardPredictor:
        """Predictor with ``predict(x [N, 64]) -> labels [N]``."""
        return ForwardForwardPredictor(state)


class FFSNNTrainer(_ForwardForwardTrainer):
    """``ff_snn``: Forward-Forward-trained LIF network."""

    name = "ff_snn"
    config_model = FFSNNConfig

    def _build(self, config: Any) -> FFSpikingNet:
        return FFSpikingNet(
            NUM_CLASSES + NUM_FEATURES,
            config.hidden_sizes,
            config.beta,
            config.threshold,
            config.slope,
        )


class FFTrainer(_ForwardForwardTrainer):
    """``ff``: Hinton's non-spiking Forward-Forward network (ReLU)."""

    name = "ff"
    config_model = FFConfig

    def _build(self, config: Any) -> FFSpikingNet:
        return FFReLUNet(NUM_CLASSES + NUM_FEATURES, config.hidden_sizes)


class BPSNNTrainer:
    """``bp_snn``: the same LIF layers + softmax readout, trained by BPTT (surrogate gradients)."""

    name = "bp_snn"
    config_model = BPSNNConfig

    def train(self, config: BaseModel, progress: ProgressFn = no_progress) -> TrainResult:
        """Train on the digits split with Adam + cross-entropy; metrics as for ``ff_snn``."""
        if not isinstance(config, BPSNNConfig):
            raise TypeError(f"bp_snn needs a BPSNNConfig, got {type(config)}")
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        data = load_digits_split()
        x_train = torch.from_numpy(data.x_train)
        y_train = torch.from_numpy(data.y_train)
        net = BPSpikingNet(
            NUM_FEATURES,
            config.hidden_sizes,
            NUM_CLASSES,
            config.beta,
            config.threshold,
            config.slope,
        )
        optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
        parallel = DataParallel.from_environment()  # torchrun: each rank a share of every batch
        parallel.attach(optimiser)
        start = time.perf_counter()
        losses: list[float] = []
        encoded = _encode_epoch(x_train, config.encoding, config.time_steps, generator)
        for epoch in range(config.epochs):
            if config.encoding == "poisson" and epoch > 0:
                encoded = _encode_epoch(x_train, config.encoding, config.time_steps, generator)
            losses = []
            for batch in _batches(len(y_train), config.batch_size, generator):
                batch = parallel.shard(batch)
                loss = nn.functional.cross_entropy(net(encoded[:, batch]), y_train[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                losses.append(loss.item())
            progress(
                (epoch + 1) / config.epochs,
                f"epoch {epoch + 1}/{config.epochs} loss {np.mean(losses):.4f}",
            )
        seconds = time.perf_counter() - start
        state = {
            "kind": self.name,
            "num_classes": NUM_CLASSES,
            "num_features": NUM_FEATURES,
            "hidden_sizes": list(config.hidden_sizes),
            "time_steps": config.time_steps,
            "encoding": config.encoding,
            "seed": config.seed,
            "beta": config.beta,
            "threshold": config.threshold,
            "slope": config.slope,
            "weights": {k: v.detach().clone() for k, v in net.state_dict().items()},
        }
        return _finish(state, config, self.load(state), data, seconds, losses)

    def load(self, state: dict[str, Any]) -> BPSpikingPredictor:
        """Predictor with ``predict(x [N, 64]) -> labels [N]``."""
        return BPSpikingPredictor(state)


FF_SNN_TRAINER = FFSNNTrainer()
FF_TRAINER = FFTrainer()
BP_SNN_TRAINER = BPSNNTrainer()
#: every method this module registers, by name
TRAINERS = {t.name: t for t in (FF_SNN_TRAINER, FF_TRAINER, BP_SNN_TRAINER)}
#: the headline method of this module
TRAINER = FF_SNN_TRAINER
