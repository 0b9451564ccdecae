"""Export a trained float base model to the int8 artifact the device runs.

Post-training static quantisation: per-channel symmetric int8 weights; activation ranges
(min/max) calibrated by running the float model over a sample of ID training clips and recording
each conv's output before its BatchNorm and after its ReLU (the device needs both: the first
when that BatchNorm adapts with LeanTTA, the second otherwise). The artifact format and the int8
network live in :mod:`shared.models.int8`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from shared.model_names import BASE_MODEL
from shared.models.checkpoint import ModelBundle
from shared.models.int8 import (
    N_BLOCKS,
    STREAMS,
    compress_features,
    int8_payload_to_bytes,
    quantize_weight_per_channel,
)
from shared.models.two_stream import TwoStreamNet

#: calibration clips taken from the ID training split
CALIBRATION_CLIPS = 256


class _RangeRecorder:
    """Running min/max of a module's output over calibration batches."""

    def __init__(self) -> None:
        self.low = float("inf")
        self.high = float("-inf")

    def __call__(self, _module: nn.Module, _inputs: Any, output: Tensor) -> None:
        self.low = min(self.low, float(output.min()))
        self.high = max(self.high, float(output.max()))

    def qparams(self) -> dict[str, float]:
        """The calibrated range; the device turns it into (scale, zero point) for its engine."""
        if self.low > self.high:
            raise ValueError("calibration saw no data")
        return {"low": self.low, "high": self.high}


def _bn_state(bn: nn.BatchNorm1d | nn.BatchNorm3d) -> dict[str, Tensor | float]:
    return {
        "mean": bn.running_mean.detach().float().clone(),
        "var": bn.running_var.detach().float().clone(),
        "weight": bn.weight.detach().float().clone(),
        "bias": bn.bias.detach().float().clone(),
        "eps": float(bn.eps),
    }


@torch.inference_mode()
def calibrate(
    model: TwoStreamNet, rgb: Tensor, flow: Tensor, batch_size: int = 64
) -> dict[str, dict[str, Any]]:
    """Activation ranges per stream: input, per block pre-BN / post-ReLU, projection output."""
    model.eval()
    recorders: dict[str, dict[str, Any]] = {}
    handles = []
    for stream in STREAMS:
        encoder = getattr(model, f"{stream}_encoder")
        entry: dict[str, Any] = {"input": _RangeRecorder(), "blocks": []}
        for i in range(N_BLOCKS):
            pre, post = _RangeRecorder(), _RangeRecorder()
            handles.append(encoder.features[3 * i].register_forward_hook(pre))
            handles.append(encoder.features[3 * i + 2].register_forward_hook(post))
            entry["blocks"].append((pre, post))
        entry["project"] = _RangeRecorder()
        handles.append(encoder.project[2].register_forward_hook(entry["project"]))
        handles.append(
            encoder.register_forward_pre_hook(
                lambda _m, args, rec=entry["input"]: rec(_m, args, args[0])
            )
        )
        recorders[stream] = entry
    try:
        for start in range(0, len(rgb), batch_size):
            model(rgb[start : start + batch_size], flow[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return recorders


def int8_payload(bundle: ModelBundle, rgb: Tensor, flow: Tensor) -> dict[str, Any]:
    """The int8 artifact payload of ``bundle`` calibrated on clips ``rgb`` / ``flow``
    ([N, T, 3, H, W] / [N, T-1, 2, H, W] float tensors as the model takes them)."""
    if len(rgb) == 0:
        raise ValueError("calibration needs at least one clip")
    model = bundle.model.eval()
    ranges = calibrate(model, rgb, flow)
    streams: dict[str, Any] = {}
    for stream in STREAMS:
        encoder = getattr(model, f"{stream}_encoder")
        rec = ranges[stream]
        input_q = rec["input"].qparams()
        if stream == "rgb":  # pixels lie in [0, 1]; exact (k/255) where the engine has 8 bits
            input_q = {"low": 0.0, "high": 1.0}
        blocks = []
        for i, (pre, post) in enumerate(rec["blocks"]):
            q, scale = quantize_weight_per_channel(encoder.features[3 * i].weight)
            blocks.append(
                {
                    "weight": q,
                    "weight_scale": scale,
                    "bn": _bn_state(encoder.features[3 * i + 1]),
                    "pre_bn": pre.qparams(),
                    "post_relu": post.qparams(),
                }
            )
        q, scale = quantize_weight_per_channel(encoder.project[0].weight)
        project = {
            "weight": q,
            "weight_scale": scale,
            "bn": _bn_state(encoder.project[1]),
            "post_relu": rec["project"].qparams(),
        }
        streams[stream] = {"input": input_q, "blocks": blocks, "project": project}
    heads = {
        name: {k: v.detach().float().clone() for k, v in getattr(model, name).state_dict().items()}
        for name in ("rgb_head", "flow_head", "fused_head")
    }
    return {
        "config": bundle.config.to_dict(),
        "classes": list(bundle.classes),
        "streams": streams,
        "heads": heads,
        "reference": {
            "features": compress_features(bundle.reference_features),
            "logits": bundle.reference_logits.detach().to(torch.float16),
            "labels": bundle.reference_labels.detach().to(torch.int16),
        },
        "thresholds": {k: float(v) for k, v in bundle.thresholds.items()},
        "metrics": dict(bundle.metrics),
        "train_config": dict(bundle.train_config),
        "calibration_clips": len(rgb),
    }


def calibration_tensors(
    n_clips: int = CALIBRATION_CLIPS, seed: int = 0, bundle: ModelBundle | None = None
) -> tuple[Tensor, Tensor]:
    """``n_clips`` random ID training clips (of the data ``bundle`` was trained on) as inputs."""
    from server.evaluation import data_config_of
    from shared.data.digit_actions import DigitActionsConfig, load_split
    from shared.data.tensors import flow_to_tensor, frames_to_tensor

    data_config = data_config_of(bundle) if bundle is not None else DigitActionsConfig()
    train = load_split("train", data_config)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(train), size=min(n_clips, len(train)), replace=False))
    part = train.subset(idx)
    return frames_to_tensor(part.frames), flow_to_tensor(part.flow)


def export_int8_bytes(bundle: ModelBundle, n_clips: int = CALIBRATION_CLIPS) -> bytes:
    """Int8 artifact bytes of ``bundle``, calibrated on ``n_clips`` ID training clips."""
    rgb, flow = calibration_tensors(n_clips, bundle=bundle)
    return int8_payload_to_bytes(int8_payload(bundle, rgb, flow))


def export_latest_int8(
    registry,
    name: str = BASE_MODEL,
    n_clips: int = CALIBRATION_CLIPS,
    calibration: tuple[Tensor, Tensor] | None = None,
):
    """Export the newest float ``name`` to int8 and register it as variant "int8", same version.

    ``calibration`` (rgb, flow) overrides the ``n_clips`` training clips. Returns the new
    :class:`ModelRecord`.
    """
    from shared.models.checkpoint import bundle_from_bytes

    record = registry.latest_model(name, "float")
    bundle = bundle_from_bytes(registry.artifacts.read_bytes(record.artifact_sha256))
    if calibration is None:
        calibration = calibration_tensors(n_clips, bundle=bundle)
    rgb, flow = calibration
    data = int8_payload_to_bytes(int8_payload(bundle, rgb, flow))
    return registry.register_int8(record, data, "int8 per-channel weights, uint8 activations")
