"""The device runtime: load the float or int8 model and apply the chosen adaptation, in one place.

Modes (``adapt``):

- ``"none"``: the model as downloaded (float: unchanged, as ``secdood-device run`` always did;
  int8: every BatchNorm folded into its ConvReLU3d).
- ``"leantta"``: the first ``adapt_layers`` conv BatchNorms *of each stream* become
  :class:`~shared.models.leantta.LeanTTANorm` (stateless, per sample); the rest are folded. On
  the int8 model the adapted norms read the conv's uint8 output (``integer_stats``).
- ``"zo"``: unsupervised zeroth-order entropy adaptation of the affine parameters (gamma, beta)
  of the first ``adapt_layers`` conv BatchNorms of each stream (source statistics; the rest
  folded): every ``every`` clips, ``steps`` ZO-Adam steps on the mean prediction entropy of the
  last ``window`` clips (evaluated ``eval_batch`` clips per forward pass, which bounds the peak
  memory), forward passes only (:mod:`device_client.zo`). Unlike LeanTTA it keeps state across
  clips.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from device_client.bn_baselines import prediction_entropy
from device_client.subspace import SubspaceGradient
from device_client.zo import ZOAdam, ZOEstimator, zo_minimise
from shared.data.flow import compute_flow_batch
from shared.data.tensors import flow_to_tensor, frames_to_tensor
from shared.embedding_adaptation import EmbeddingAdaptation, adapted_names
from shared.models.checkpoint import ModelBundle, bundle_from_bytes
from shared.models.int8 import (
    AUTO_ENGINE,
    int8_bundle,
    int8_payload_from_bytes,
    is_int8_artifact,
)
from shared.models.leantta import LeanTTANorm, apply_leantta, fold_batchnorm
from shared.pipeline import DEFAULT_DETECTOR, OODPipeline, Verdicts

ADAPT_MODES = ("none", "leantta", "zo")
#: LeanTTA / ZO adapt all three conv BatchNorms of each stream by default (the projection
#: BatchNorm1d is folded); bench/device.py re-chooses (k, tau, lambda) on validation shifts
DEFAULT_ADAPT_LAYERS = 3


@dataclass(frozen=True)
class ZOStreamConfig:
    """Online ZO entropy adaptation settings (mode ``"zo"``)."""

    window: int = 16  # recent clips the entropy is measured on
    eval_batch: int = 4  # clips per forward pass when evaluating the window's entropy
    every: int = 8  # adapt after this many new clips
    steps: int = 2  # ZO-Adam steps per adaptation round
    n_directions: int = 2
    eps: float = 1e-2
    lr: float = 5e-3
    two_sided: bool = True
    subspace: bool = False

    def __post_init__(self) -> None:
        for name in ("window", "eval_batch", "every", "steps", "n_directions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (self.eps > 0 and self.lr > 0):
            raise ValueError(f"eps and lr must be positive, got {self.eps} and {self.lr}")


def load_model(
    source: str | Path | bytes,
    adapt: str = "none",
    adapt_layers: int = DEFAULT_ADAPT_LAYERS,
    int8: bool | None = None,
    tau: float = 0.9,
    lam: float = 0.9,
    engine: str | None = AUTO_ENGINE,
) -> ModelBundle:
    """Load an artifact (path or bytes) and prepare its model for ``adapt``.

    ``int8=None`` takes the artifact as it is; True / False insist on that kind and raise a
    ValueError naming the variant to download otherwise. ``engine`` picks the quantised engine
    (default ``"auto"``: the fastest on this CPU, measured once per process; None: qnnpack on
    ARM, x86 elsewhere).
    """
    if adapt not in ADAPT_MODES:
        raise ValueError(f"adapt must be one of {ADAPT_MODES}, got {adapt!r}")
    names = adapted_names(adapt_layers)
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"model artifact not found: {path}")
        data = path.read_bytes()
    found_int8 = is_int8_artifact(data)
    if int8 is not None and bool(int8) != found_int8:
        wanted, got = ("int8", "float") if int8 else ("float", "int8")
        raise ValueError(
            f"expected a {wanted} artifact but this is the {got} one; "
            f"download it with `secdood-device download --variant {wanted}`"
        )
    if found_int8:
        payload = int8_payload_from_bytes(data)
        layers = 0 if adapt == "none" else adapt_layers
        factory = functools.partial(LeanTTANorm, tau=tau, lam=lam) if adapt == "leantta" else None
        return int8_bundle(payload, layers, factory, engine)
    bundle = bundle_from_bytes(data)
    if adapt == "leantta":
        bundle.model = apply_leantta(bundle.model, names=names, tau=tau, lam=lam)
        bundle.model = fold_batchnorm(bundle.model)
    elif adapt == "zo":
        bundle.model = fold_batchnorm(bundle.model, skip=names)
    bundle.model.requires_grad_(False)
    return bundle


def adaptable_batchnorms(model: nn.Module) -> list[nn.BatchNorm3d]:
    """The unfused conv BatchNorms left in a model prepared for ``"zo"`` (float or int8)."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]


class BatchNormAffine:
    """Flat view (d,) of the affine parameters of some BatchNorms, to read and write as one."""

    def __init__(self, layers: list[nn.BatchNorm3d]) -> None:
        if not layers:
            raise ValueError("no unfused BatchNorm to adapt: use adapt_layers >= 1")
        self.tensors = [t for bn in layers for t in (bn.weight, bn.bias)]

    def get(self) -> Tensor:
        return torch.cat([t.detach().reshape(-1) for t in self.tensors]).clone()

    @torch.no_grad()
    def set(self, theta: Tensor) -> None:
        offset = 0
        for t in self.tensors:
            t.copy_(theta[offset : offset + t.numel()].reshape(t.shape))
            offset += t.numel()


class OnlineZOAdapter:
    """Stateful ZO entropy adaptation of BatchNorm affine parameters over a clip stream."""

    def __init__(self, model: nn.Module, config: ZOStreamConfig = ZOStreamConfig()) -> None:
        self.model = model
        self.config = config
        self.params = BatchNormAffine(adaptable_batchnorms(model))
        self.theta = self.params.get()
        self.estimator = ZOEstimator(config.n_directions, config.eps, config.two_sided)
        self.optimizer = ZOAdam(lr=config.lr)
        self.subspace = SubspaceGradient() if config.subspace else None
        self.recent: deque[tuple[Tensor, Tensor]] = deque(maxlen=config.window)
        self.since_update = 0
        self.rounds = 0
        self.forward_passes = 0

    @torch.inference_mode()
    def window_entropy(self, theta: Tensor) -> float:
        """Mean prediction entropy of the window at ``theta``, ``eval_batch`` clips at a time.

        Chunking gives the same loss as one batch (the model is per-clip in eval mode) while the
        peak activation memory scales with ``eval_batch`` instead of ``window``.
        """
        self.params.set(theta)
        clips = list(self.recent)
        total = 0.0
        for start in range(0, len(clips), self.config.eval_batch):
            chunk = clips[start : start + self.config.eval_batch]
            rgb = torch.cat([r for r, _ in chunk])
            flow = torch.cat([f for _, f in chunk])
            total += float(prediction_entropy(self.model(rgb, flow)).sum())
        return total / len(clips)

    def observe(self, rgb: Tensor, flow: Tensor) -> None:
        """Remember clips [N, ...]; adapt when ``every`` new clips have arrived."""
        for i in range(len(rgb)):
            self.recent.append((rgb[i : i + 1].clone(), flow[i : i + 1].clone()))
            self.since_update += 1
        if self.since_update >= self.config.every:
            self.since_update = 0
            self.theta, _ = zo_minimise(
                self.window_entropy,
                self.theta,
                self.config.steps,
                self.estimator,
                self.optimizer,
                self.subspace,
                seed=self.rounds,
                monitor=False,
            )
            self.params.set(self.theta)
            self.forward_passes += self.config.steps * self.estimator.forward_passes_per_step
            self.rounds += 1


@runtime_checkable
class ThresholdedHead(Protocol):
    """A head whose logits come with their own verdict threshold (e.g. the personalised
    head: see :class:`device_client.personal_head.PersonalHead`)."""

    def __call__(self, features: Tensor) -> Tensor | None: ...

    def verdict_threshold(self, detector: str) -> float | None:
        """The threshold for the logits of the last call (None: the model's own)."""
        ...


class DeviceRuntime:
    """Scores clips with the prepared model; adapts online in mode ``"zo"``."""

    def __init__(
        self,
        bundle: ModelBundle,
        adapt: str = "none",
        zo_config: ZOStreamConfig | None = None,
    ) -> None:
        if adapt not in ADAPT_MODES:
            raise ValueError(f"adapt must be one of {ADAPT_MODES}, got {adapt!r}")
        self.bundle = bundle
        self.adapt = adapt
        self.pipeline = OODPipeline(bundle)
        self.adapter = (
            OnlineZOAdapter(bundle.model, zo_config or ZOStreamConfig()) if adapt == "zo" else None
        )

    @classmethod
    def from_artifact(
        cls,
        source: str | Path | bytes,
        adapt: str = "none",
        adapt_layers: int = DEFAULT_ADAPT_LAYERS,
        int8: bool | None = None,
        engine: str | None = AUTO_ENGINE,
        zo_config: ZOStreamConfig | None = None,
        tau: float = 0.9,
        lam: float = 0.9,
    ) -> DeviceRuntime:
        bundle = load_model(source, adapt, adapt_layers, int8=int8, engine=engine, tau=tau, lam=lam)
        return cls(bundle, adapt, zo_config)

    @classmethod
    def for_embedding(
        cls,
        source: str | Path | bytes,
        embedding: EmbeddingAdaptation,
        int8: bool | None = None,
        engine: str | None = AUTO_ENGINE,
    ) -> DeviceRuntime:
        """A runtime whose embeddings are of ``embedding``'s kind (what H reads)."""
        if embedding.mode == "none":
            return cls.from_artifact(source, int8=int8, engine=engine)
        return cls.from_artifact(
            source, "leantta", embedding.layers, int8, engine, tau=embedding.tau, lam=embedding.lam
        )

    @property
    def is_int8(self) -> bool:
        return type(self.bundle.model).__name__ == "Int8TwoStreamNet"

    def score_clips(
        self,
        frames: np.ndarray,
        detector: str = DEFAULT_DETECTOR,
        head: Callable[[Tensor], Tensor | None] | None = None,
        threshold: float | None = None,
    ) -> Verdicts:
        """uint8 clips [N, T, H, W, 3] -> verdicts (flow computed here)."""
        rgb = frames_to_tensor(frames)
        flow = flow_to_tensor(compute_flow_batch(frames))
        return self.score_tensors(rgb, flow, detector, head, threshold)

    def score_tensors(
        self,
        rgb: Tensor,
        flow: Tensor,
        detector: str = DEFAULT_DETECTOR,
        head: Callable[[Tensor], Tensor | None] | None = None,
        threshold: float | None = None,
    ) -> Verdicts:
        """Model-ready inputs -> verdicts; in mode ``"zo"`` the clips then feed the adapter.

        ``head`` maps the embeddings z [N, D] to logits [N, C] (e.g. a personalised
        classifier); None from it, or no ``head``, means the model's global head. A
        head with its own scale (:class:`ThresholdedHead`) also sets the verdict
        threshold for the logits it returned; ``threshold`` overrides both.
        """
        with torch.inference_mode():
            features = self.bundle.model.embed(rgb, flow)
        logits = head(features) if head is not None else None
        if threshold is None and logits is not None and isinstance(head, ThresholdedHead):
            threshold = head.verdict_threshold(detector)
        verdicts = self.pipeline.score_features(
            features, detector, logits=logits, threshold=threshold
        )
        if self.adapter is not None:
            self.adapter.observe(rgb, flow)
        return verdicts
