"""Forward-Forward networks (spiking and ReLU) and a BP-trained SNN: inference only.

Forward-Forward (Hinton 2022, arXiv 2212.13345); FF-SNN (arXiv 2502.20411).
Training lives in ``server/training/forward_forward.py``; this module is what a
device runs: rebuild a network from a state dict and predict labels.

Conventions
-----------
* Inputs ``x`` are ``[N, 64]`` floats in [0, 1] (8x8 digits, row-major).
* Label embedding: the one-hot label occupies the **first C inputs** of the
  first layer, the image follows, so layer 1 sees ``[N, C + 64]``
  (:func:`embed_label`). Under a spike encoding the label channels are spikes
  at every step (a rate code with intensity 1).
* Every FF layer length-normalises its input (divides each sample's input,
  flattened over time and channels, by its root-mean-square) and detaches it,
  so no gradient and no goodness information crosses layers.
* Goodness of a layer = mean over its neurons of the squared activity:
  spike rate ``count / T`` for LIF layers, the ReLU output (averaged over
  steps) for ReLU layers. Higher goodness = "this label fits this image".
* Prediction: the label with the highest goodness summed over layers
  (optionally skipping layer 1, as Hinton does for deeper nets).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.methods.spiking import check_lif_params, encode, lif_run

NUM_CLASSES = 10
NUM_FEATURES = 64
#: seed offset for the spike encoding used when predicting (training uses the config seed)
PREDICT_SEED_OFFSET = 1_000_003


def check_features(x: np.ndarray | torch.Tensor, num_features: int = NUM_FEATURES) -> None:
    """Raise ValueError unless ``x`` is ``[N, num_features]`` with finite values in [0, 1]."""
    if x.ndim != 2 or x.shape[1] != num_features:
        raise ValueError(
            f"expected features of shape [N, {num_features}] (8x8 digits scaled to [0, 1]), "
            f"got {tuple(x.shape)}"
        )
    values = torch.as_tensor(x)
    if values.numel() and (
        not torch.isfinite(values).all() or values.min() < 0 or values.max() > 1
    ):
        raise ValueError("features must be finite and lie in [0, 1]")


def embed_label(inputs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Prepend the one-hot label: ``[T, N, D]`` (or ``[N, D]``) -> ``[..., C + D]``."""
    if labels.dim() != 1 or labels.shape[0] != inputs.shape[-2]:
        raise ValueError(
            f"labels must be [N] with N = {inputs.shape[-2]}, got {tuple(labels.shape)}"
        )
    one_hot = nn.functional.one_hot(labels.long(), num_classes).to(inputs.dtype)
    one_hot = one_hot.expand(*inputs.shape[:-1], num_classes)
    return torch.cat([one_hot, inputs], dim=-1)


def normalise_length(inputs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Detach and scale each sample of ``[T, N, D]`` to unit root-mean-square over (T, D)."""
    inputs = inputs.detach()
    rms = inputs.pow(2).mean(dim=(0, 2), keepdim=True).sqrt()
    return inputs / (rms + eps)


class FFSpikingNet(nn.Module):
    """Stack of fully connected LIF layers, each trained by its own Forward-Forward loss."""

    def __init__(
        self,
        in_features: int,
        hidden_sizes: list[int],
        beta: float = 0.9,
        threshold: float = 1.0,
        slope: float = 5.0,
    ) -> None:
        super().__init__()
        check_lif_params(beta, threshold, slope)
        sizes = [in_features, *hidden_sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.beta, self.threshold, self.slope = beta, threshold, slope

    def layer_forward(self, index: int, inputs: torch.Tensor) -> torch.Tensor:
        """Spikes ``[T, N, H]`` of layer ``index`` for (detached, normalised) ``inputs``."""
        currents = self.layers[index](normalise_length(inputs))
        return lif_run(currents, self.beta, self.threshold, self.slope).spikes

    @staticmethod
    def goodness(activity: torch.Tensor) -> torch.Tensor:
        """Mean squared spike rate per sample: ``[T, N, H] -> [N]``, in [0, 1]."""
        return activity.mean(dim=0).pow(2).mean(dim=1)

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Activity of every layer for label-embedded ``inputs`` ``[T, N, C + D]``."""
        activities = []
        for index in range(len(self.layers)):
            inputs = self.layer_forward(index, inputs)
            activities.append(inputs)
        return activities


class FFReLUNet(FFSpikingNet):
    """Hinton's non-spiking Forward-Forward net: ReLU layers, same layer-local scheme.

    Given ``[T, N, D]`` input it treats each step as an independent frame (no state).
    """

    def __init__(self, in_features: int, hidden_sizes: list[int]) -> None:
        super().__init__(in_features, hidden_sizes)

    def layer_forward(self, index: int, inputs: torch.Tensor) -> torch.Tensor:
        """ReLU activity ``[T, N, H]`` of layer ``index``."""
        return torch.relu(self.layers[index](normalise_length(inputs)))

    @staticmethod
    def goodness(activity: torch.Tensor) -> torch.Tensor:
        """Mean squared activity per sample, averaged over frames: ``[T, N, H] -> [N]``."""
        return activity.pow(2).mean(dim=(0, 2))


class BPSpikingNet(nn.Module):
    """LIF hidden layers + linear softmax readout on the last layer's spike rate.

    Trained end to end by backpropagation through time with surrogate gradients.
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: list[int],
        num_classes: int = NUM_CLASSES,
        beta: float = 0.9,
        threshold: float = 1.0,
        slope: float = 5.0,
    ) -> None:
        super().__init__()
        check_lif_params(beta, threshold, slope)
        sizes = [in_features, *hidden_sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.readout = nn.Linear(sizes[-1], num_classes)
        self.beta, self.threshold, self.slope = beta, threshold, slope

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, C]`` for encoded input ``[T, N, D]``."""
        activity = inputs
        for layer in self.layers:
            activity = lif_run(layer(activity), self.beta, self.threshold, self.slope).spikes
        return self.readout(activity.mean(dim=0))


@torch.no_grad()
def label_goodness(
    net: FFSpikingNet, encoded: torch.Tensor, num_classes: int, skip_first_layer: bool
) -> torch.Tensor:
    """Goodness summed over layers for every candidate label: ``[T, N, D] -> [N, C]``."""
    n = encoded.shape[1]
    first = 1 if skip_first_layer and len(net.layers) > 1 else 0
    scores = torch.zeros(n, num_classes)
    for label in range(num_classes):
        labels = torch.full((n,), label, dtype=torch.long)
        activities = net(embed_label(encoded, labels, num_classes))
        scores[:, label] = sum(net.goodness(a) for a in activities[first:])
    return scores


def _encoding_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed + PREDICT_SEED_OFFSET)


class ForwardForwardPredictor:
    """Device-side classifier for an FF-SNN or FF (ReLU) state dict."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.kind: str = state["kind"]
        self.num_classes: int = state["num_classes"]
        self.num_features: int = state["num_features"]
        self.time_steps: int = state["time_steps"]
        self.encoding: str = state["encoding"]
        self.seed: int = state["seed"]
        self.skip_first_layer: bool = state["skip_first_layer"]
        in_features = self.num_classes + self.num_features
        if self.kind == "ff_snn":
            self.net: FFSpikingNet = FFSpikingNet(
                in_features,
                state["hidden_sizes"],
                state["beta"],
                state["threshold"],
                state["slope"],
            )
        elif self.kind == "ff":
            self.net = FFReLUNet(in_features, state["hidden_sizes"])
        else:
            raise ValueError(
                f"ForwardForwardPredictor needs kind 'ff_snn' or 'ff', got {self.kind!r}"
            )
        self.net.load_state_dict(state["weights"])
        self.net.eval()

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Summed goodness per label ``[N, C]`` (higher = that label fits better)."""
        check_features(x, self.num_features)
        inputs = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        steps = 1 if (self.kind == "ff" and self.encoding == "static") else self.time_steps
        encoded = encode(inputs, self.encoding, steps, _encoding_generator(self.seed))
        return label_goodness(self.net, encoded, self.num_classes, self.skip_first_layer).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted labels ``[N]`` (int64) for features ``[N, 64]`` in [0, 1]."""
        return self.scores(x).argmax(axis=1).astype(np.int64)


class BPSpikingPredictor:
    """Device-side classifier for a BP-trained SNN state dict."""

    def __init__(self, state: dict[str, Any]) -> None:
        if state["kind"] != "bp_snn":
            raise ValueError(f"BPSpikingPredictor needs kind 'bp_snn', got {state['kind']!r}")
        self.num_features: int = state["num_features"]
        self.time_steps: int = state["time_steps"]
        self.encoding: str = state["encoding"]
        self.seed: int = state["seed"]
        self.net = BPSpikingNet(
            self.num_features,
            state["hidden_sizes"],
            state["num_classes"],
            state["beta"],
            state["threshold"],
            state["slope"],
        )
        self.net.load_state_dict(state["weights"])
        self.net.eval()

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Class logits ``[N, C]``."""
        check_features(x, self.num_features)
        inputs = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        encoded = encode(inputs, self.encoding, self.time_steps, _encoding_generator(self.seed))
        return self.net(encoded).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted labels ``[N]`` (int64) for features ``[N, 64]`` in [0, 1]."""
        return self.logits(x).argmax(axis=1).astype(np.int64)


def build_predictor(state: dict[str, Any]) -> ForwardForwardPredictor | BPSpikingPredictor:
    """Rebuild the right predictor from a trainer's ``TrainResult.state``."""
    kind = state.get("kind")
    if kind in ("ff_snn", "ff"):
        return ForwardForwardPredictor(state)
    if kind == "bp_snn":
        return BPSpikingPredictor(state)
    raise ValueError(f"unknown forward-forward state kind {kind!r}; expected ff_snn, ff or bp_snn")
