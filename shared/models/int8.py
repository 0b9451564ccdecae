"""The int8 base model: artifact format, quantisation helpers and the int8 two-stream network.

Why this path (measured, docs/device.md): the convolutions run on torch's int8 CPU kernels
(``torch.ao.nn.quantized`` Conv3d / ConvReLU3d / LinearReLU: fbgemm/oneDNN on x86, qnnpack on
ARM) with per-channel int8 weights and per-tensor uint8 activations. ``torch._int_mm`` (the
"own int8 GEMM" route) is ~30x slower than float matmul on CPU in torch 2.13, and torchao has
no Conv3d int8 path. The quantised-tensor API warns that it is deprecated (UserWarning from
``quantize_per_tensor``); every call into it is wrapped in :func:`quiet_quantized` so users never
see it. The artifact itself holds only plain tensors (int8 weights, float scales), so a later
backend (torchao, ExecuTorch) can read the same file.

Artifact (``torch.save`` dict, loaded with ``weights_only=True``): per stream, each conv block's
int8 weight (symmetric, per output channel, range [-127, 127]) and scales, its BatchNorm
statistics and affine parameters (*not* folded), and calibrated activation ranges both before
the BatchNorm and after the ReLU. Folding happens at load time and is exact in int8: folding
``f = gamma / sqrt(var + eps)`` into a per-channel quantised weight only rescales each channel
(``scale' = |f| scale``, ``q' = sign(f) q``; symmetric range makes the sign flip lossless). So one
artifact serves any choice of LeanTTA layers: adapted BatchNorms stay unfused and see the conv's
int8 output, the others are folded into ``ConvReLU3d``. Heads stay float (tiny; the OOD
detectors and personalisation need the fused head in float). Reference features are stored as
uint8 per dimension (affine min/max), logits as float16.
"""

from __future__ import annotations

import contextlib
import platform
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
from torch import Tensor, nn

from shared.models.checkpoint import ModelBundle
from shared.models.two_stream import TwoStreamConfig, TwoStreamOutput, check_clip_inputs
from shared.saved_files import load_saved, save_payload

INT8_FORMAT = "secdood-two-stream-int8"
INT8_FORMAT_VERSION = 1
STREAMS = ("rgb", "flow")
N_BLOCKS = 3
#: conv strides of the three blocks (must match shared.models.two_stream.StreamEncoder)
BLOCK_STRIDES = ((1, 2, 2), (2, 2, 2), (1, 2, 2))
_WEIGHT_QMAX = 127


@contextlib.contextmanager
def quiet_quantized() -> Iterator[None]:
    """Silence torch's deprecation notice for quantised tensors inside this block only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*quantized tensor.*deprecated", module="")
        warnings.filterwarnings("ignore", message=r".*quantized.*deprecated")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        yield


def default_engine() -> str:
    """qnnpack on ARM (Raspberry Pi, phones); on x86 torch's "x86" engine (fbgemm + oneDNN)."""
    supported = torch.backends.quantized.supported_engines
    if platform.machine().lower() in ("arm64", "aarch64", "armv7l") and "qnnpack" in supported:
        return "qnnpack"
    for engine in ("x86", "fbgemm", "onednn", "qnnpack"):
        if engine in supported:
            return engine
    raise RuntimeError(f"this torch build has no quantised CPU engine ({supported})")


#: ``engine=AUTO_ENGINE`` picks the fastest engine on this CPU by measurement
AUTO_ENGINE = "auto"
_measured_engines: dict[str, str] = {}


def engine_latencies(payload: dict[str, Any], batch: int = 1, repeats: int = 7) -> dict[str, float]:
    """Median CPU seconds of one int8 forward pass (``batch`` clips) per available engine.

    Which engine is fastest depends on the CPU (AVX-512 VNNI, AMX, ARM dot-product
    instructions …) and the layer shapes, so it is measured, not assumed. Engines
    take turns pass by pass and the clock is this process's CPU time, so a burst
    of load from other programs does not decide the choice.
    """
    config = TwoStreamConfig.from_dict(payload["config"])
    t, size = config.n_frames, config.size
    rgb = torch.rand(batch, t, 3, size, size)
    flow = torch.rand(batch, t - 1, 2, size, size)
    previous = torch.backends.quantized.engine
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    times: dict[str, list[float]] = {engine: [] for engine in engines}
    try:
        models = {engine: build_int8_model(payload, engine=engine) for engine in engines}
        with torch.inference_mode():
            for turn in range(repeats + 1):  # turn 0 packs weights and warms caches
                for engine, model in models.items():
                    torch.backends.quantized.engine = engine
                    started = time.process_time()
                    model(rgb, flow)
                    if turn:
                        times[engine].append(time.process_time() - started)
    finally:
        torch.backends.quantized.engine = previous
    return {engine: sorted(spent)[len(spent) // 2] for engine, spent in times.items()}


def fastest_engine(payload: dict[str, Any]) -> str:
    """The engine with the lowest measured batch-1 latency; measured once per model shape."""
    key = repr(sorted(payload["config"].items()))
    if key not in _measured_engines:
        latencies = engine_latencies(payload)
        _measured_engines[key] = min(latencies, key=latencies.__getitem__)
    return _measured_engines[key]


def set_engine(engine: str | None) -> str:
    """Select the quantised engine (process-wide in torch); returns the name used."""
    engine = engine or default_engine()
    supported = torch.backends.quantized.supported_engines
    if engine not in supported:
        raise ValueError(f"quantised engine {engine!r} is not available; choose one of {supported}")
    torch.backends.quantized.engine = engine
    return engine


# -- quantisation of weights, activations, reference features -----------------------------------


def quantize_weight_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: ``weight ~ q * scale[:, None, ...]``.

    ``weight`` float [C_out, ...] -> (int8 [C_out, ...] in [-127, 127], float32 scale [C_out]).
    """
    if not isinstance(weight, Tensor) or not weight.is_floating_point() or weight.dim() < 2:
        raise ValueError(
            f"expected a float weight [C_out, ...], got {getattr(weight, 'shape', weight)}"
        )
    w = weight.detach().float()
    amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    scale = torch.where(amax > 0, amax / _WEIGHT_QMAX, torch.ones_like(amax))
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = torch.round(w / scale.reshape(shape)).clamp_(-_WEIGHT_QMAX, _WEIGHT_QMAX)
    return q.to(torch.int8), scale


def activation_qmax(engine: str) -> int:
    """Largest uint8 activation code for ``engine``: x86 kernels (fbgemm, oneDNN) multiply
    uint8 x int8 pairs with 16-bit saturation, so they need 7-bit activations (torch's
    ``reduce_range``); qnnpack uses the full 8 bits."""
    return 255 if engine == "qnnpack" else 127


def activation_qparams(low: float, high: float, qmax: int = 255) -> tuple[float, int]:
    """Affine uint8 (scale, zero point) covering [low, high] (widened to include 0) with codes
    0..qmax."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if not (torch.isfinite(torch.tensor([low, high])).all()):
        raise ValueError(f"activation range must be finite, got [{low}, {high}]")
    scale = (high - low) / qmax if high > low else 1.0
    zero_point = int(min(qmax, max(0, round(-low / scale))))
    return scale, zero_point


def compress_features(features: Tensor) -> dict[str, Tensor]:
    """Per-dimension affine uint8 codes for reference features [M, D] (dequantise to use)."""
    f = features.detach().float()
    low, high = f.amin(dim=0), f.amax(dim=0)
    scale = torch.where(high > low, (high - low) / 255.0, torch.ones_like(high))
    codes = torch.round((f - low) / scale).clamp_(0, 255).to(torch.uint8)
    return {"codes": codes, "low": low, "scale": scale}


def decompress_features(packed: dict[str, Tensor]) -> Tensor:
    """Inverse of :func:`compress_features`: float32 [M, D], error <= scale / 2 per dimension."""
    return packed["codes"].float() * packed["scale"] + packed["low"]


# -- the int8 network --------------------------------------------------------------------------


@dataclass
class _ActivationRange:
    scale: float
    zero_point: int


def _qweight(q: Tensor, scale: Tensor) -> Tensor:
    return torch._make_per_channel_quantized_tensor(
        q, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0
    )


def _bn_factor(bn: dict[str, Tensor]) -> Tensor:
    return bn["weight"] / torch.sqrt(bn["var"] + float(bn["eps"]))


def fold_quantized(
    q: Tensor, scale: Tensor, bn: dict[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Fold eval BN into a per-channel int8 weight exactly: returns (q', scale', bias')."""
    factor = _bn_factor(bn)
    sign = torch.where(factor < 0, -1, 1).to(torch.int8)
    q_folded = q * sign.reshape((-1,) + (1,) * (q.dim() - 1))
    magnitude = factor.abs()
    scale_folded = torch.where(magnitude > 0, scale * magnitude, torch.ones_like(scale))
    q_folded = torch.where(
        (magnitude > 0).reshape((-1,) + (1,) * (q.dim() - 1)), q_folded, torch.zeros_like(q)
    )
    bias = bn["bias"] - bn["mean"] * factor
    return q_folded, scale_folded, bias


def _batchnorm3d(bn: dict[str, Tensor]) -> nn.BatchNorm3d:
    layer = nn.BatchNorm3d(len(bn["mean"]), eps=float(bn["eps"]))
    with torch.no_grad():
        layer.running_mean.copy_(bn["mean"])
        layer.running_var.copy_(bn["var"])
        layer.weight.copy_(bn["weight"])
        layer.bias.copy_(bn["bias"])
    return layer.eval()


class DequantizedNorm(nn.Module):
    """A float norm layer (eval BatchNorm) behind a dequantisation: the default for an unfused
    block when no adaptive norm is given (int8 in, float out, like LeanTTANorm)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.dequantize() if x.is_quantized else x)


class Int8Block(nn.Module):
    """One Conv3d-BN-ReLU block on int8 activations.

    Fused (``norm is None``): ``ConvReLU3d`` with the BN folded in, uint8 out. Adapted: int8
    ``Conv3d`` whose uint8 output (calibrated pre-BN range) goes to ``norm`` — e.g. a
    :class:`~shared.models.leantta.LeanTTANorm`, which reads the integer representation — then
    float ReLU and requantisation to the block's post-ReLU range.
    """

    def __init__(self, conv: nn.Module, norm: nn.Module | None, out_range: _ActivationRange):
        super().__init__()
        self.conv = conv
        self.norm = norm
        self.out_scale = out_range.scale
        self.out_zero_point = out_range.zero_point

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.norm is None:
            return y
        y = torch.relu(self.norm(y))
        return torch.quantize_per_tensor(y, self.out_scale, self.out_zero_point, torch.quint8)


class Int8StreamEncoder(nn.Module):
    """Int8 counterpart of ``StreamEncoder``: float [N, C, T, H, W] -> float embedding [N, E]."""

    def __init__(
        self, input_range: _ActivationRange, blocks: Sequence[Int8Block], project: nn.Module
    ) -> None:
        super().__init__()
        self.in_scale = input_range.scale
        self.in_zero_point = input_range.zero_point
        self.blocks = nn.ModuleList(blocks)
        self.project = project

    def forward(self, x: Tensor) -> Tensor:
        with quiet_quantized():
            q = torch.quantize_per_tensor(
                x.contiguous(), self.in_scale, self.in_zero_point, torch.quint8
            )
            for block in self.blocks:
                q = block(q)
            pooled = torch.nn.functional.adaptive_avg_pool3d(q, 1).flatten(1)
            return self.project(pooled).dequantize()


class Int8TwoStreamNet(nn.Module):
    """Int8 two-stream model with the float model's interface (``embed``, ``forward_all``,
    ``forward`` -> fused logits, float ``fused_head``), so :class:`OODPipeline` runs it as is."""

    def __init__(
        self,
        config: TwoStreamConfig,
        rgb_encoder: Int8StreamEncoder,
        flow_encoder: Int8StreamEncoder,
        heads: dict[str, nn.Linear],
        engine: str,
    ) -> None:
        super().__init__()
        self.config = config
        self.engine = engine
        self.rgb_encoder = rgb_encoder
        self.flow_encoder = flow_encoder
        self.rgb_head = heads["rgb_head"]
        self.flow_head = heads["flow_head"]
        self.fused_head = heads["fused_head"]

    def check_inputs(self, rgb: Tensor, flow: Tensor) -> None:
        check_clip_inputs(self.config, rgb, flow)

    def embed_streams(self, rgb: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        self.check_inputs(rgb, flow)
        return self.rgb_encoder(rgb.transpose(1, 2)), self.flow_encoder(flow.transpose(1, 2))

    def embed(self, rgb: Tensor, flow: Tensor) -> Tensor:
        """The fused embedding z [N, D] (float32, from the int8 encoders)."""
        return torch.cat(self.embed_streams(rgb, flow), dim=1)

    def forward_all(self, rgb: Tensor, flow: Tensor) -> TwoStreamOutput:
        z_rgb, z_flow = self.embed_streams(rgb, flow)
        z = torch.cat([z_rgb, z_flow], dim=1)
        return TwoStreamOutput(z, self.fused_head(z), self.rgb_head(z_rgb), self.flow_head(z_flow))

    def forward(self, rgb: Tensor, flow: Tensor) -> Tensor:
        return self.fused_head(self.embed(rgb, flow))

    def train(self, mode: bool = True) -> Int8TwoStreamNet:
        if mode:
            raise ValueError("the int8 model is inference-only; it cannot be put in train mode")
        return super().train(False)


def _range(entry: dict[str, Any], qmax: int) -> _ActivationRange:
    """Quantisation of a calibrated range ``{"low", "high"}`` for an engine with codes 0..qmax."""
    return _ActivationRange(*activation_qparams(entry["low"], entry["high"], qmax))


def adapted_block_names(stream: str, adapt_layers: int) -> list[str]:
    """Float-model BatchNorm names of the first ``adapt_layers`` conv blocks of ``stream``."""
    return [f"{stream}_encoder.features.{3 * i + 1}" for i in range(adapt_layers)]


def _build_stream(
    payload: dict[str, Any], adapt_layers: int, norm_factory, qmax: int
) -> Int8StreamEncoder:
    blocks = []
    for index, entry in enumerate(payload["blocks"]):
        q, scale = entry["weight"], entry["weight_scale"]
        c_out, c_in = q.shape[:2]
        stride = BLOCK_STRIDES[index]
        if index < adapt_layers:
            conv = nnq.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
            conv.set_weight_bias(_qweight(q, scale), None)
            pre = _range(entry["pre_bn"], qmax)
            conv.scale, conv.zero_point = pre.scale, pre.zero_point
            norm = norm_factory(_batchnorm3d(entry["bn"]))
        else:
            q_f, scale_f, bias = fold_quantized(q, scale, entry["bn"])
            conv = nniq.ConvReLU3d(c_in, c_out, 3, stride=stride, padding=1, bias=True)
            conv.set_weight_bias(_qweight(q_f, scale_f), bias.float())
            post = _range(entry["post_relu"], qmax)
            conv.scale, conv.zero_point = post.scale, post.zero_point
            norm = None
        blocks.append(Int8Block(conv, norm, _range(entry["post_relu"], qmax)))
    proj = payload["project"]
    q_f, scale_f, bias = fold_quantized(proj["weight"], proj["weight_scale"], proj["bn"])
    project = nniq.LinearReLU(q_f.shape[1], q_f.shape[0])
    project.set_weight_bias(_qweight(q_f, scale_f), bias.float())
    out = _range(proj["post_relu"], qmax)
    project.scale, project.zero_point = out.scale, out.zero_point
    return Int8StreamEncoder(_range(payload["input"], qmax), blocks, project)


def _heads(payload: dict[str, Any]) -> dict[str, nn.Linear]:
    heads = {}
    for name, state in payload.items():
        layer = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        layer.load_state_dict(state)
        layer.requires_grad_(False)
        heads[name] = layer
    return heads


def build_int8_model(
    payload: dict[str, Any],
    adapt_layers: int = 0,
    norm_factory=None,
    engine: str | None = None,
) -> Int8TwoStreamNet:
    """Int8 network from an artifact payload; the first ``adapt_layers`` conv blocks of each
    stream keep their BatchNorm unfused, wrapped by ``norm_factory(bn)`` (default: the plain
    eval BatchNorm3d; the device passes ``LeanTTANorm``), the rest are folded. ``engine``:
    None → :func:`default_engine`, ``"auto"`` → :func:`fastest_engine` (measured)."""
    if isinstance(adapt_layers, bool) or not isinstance(adapt_layers, int):
        raise TypeError(f"adapt_layers must be an int, got {type(adapt_layers).__name__}")
    if not 0 <= adapt_layers <= N_BLOCKS:
        raise ValueError(f"adapt_layers must lie in [0, {N_BLOCKS}], got {adapt_layers}")
    if engine == AUTO_ENGINE:
        engine = fastest_engine(payload)
    engine = set_engine(engine)
    factory = norm_factory or DequantizedNorm
    config = TwoStreamConfig.from_dict(payload["config"])
    qmax = activation_qmax(engine)
    with quiet_quantized():
        encoders = [
            _build_stream(payload["streams"][s], adapt_layers, factory, qmax) for s in STREAMS
        ]
    model = Int8TwoStreamNet(config, *encoders, heads=_heads(payload["heads"]), engine=engine)
    model.requires_grad_(False)  # inference only; ZO adapts BN affine by forward passes
    return model.eval()


# -- artifact bytes ----------------------------------------------------------------------------


def int8_payload_to_bytes(payload: dict[str, Any]) -> bytes:
    """Serialise an int8 payload (plain tensors and numbers only) to artifact bytes."""
    return save_payload({"format": INT8_FORMAT, "format_version": INT8_FORMAT_VERSION, **payload})


def int8_payload_from_bytes(data: bytes) -> dict[str, Any]:
    """Read int8 artifact bytes (``weights_only=True``); ValueError when it is not one."""
    return load_saved(data, INT8_FORMAT, (INT8_FORMAT_VERSION,), "SecDOOD int8 artifact")


def is_int8_artifact(data: bytes) -> bool:
    """Whether ``data`` is an int8 artifact (cheap check of the format tag)."""
    try:
        int8_payload_from_bytes(data)
    except ValueError:
        return False
    return True


def int8_bundle(
    payload: dict[str, Any],
    adapt_layers: int = 0,
    norm_factory=None,
    engine: str | None = None,
) -> ModelBundle:
    """A :class:`ModelBundle` around the int8 network (reference features decompressed)."""
    model = build_int8_model(payload, adapt_layers, norm_factory, engine)
    ref = payload["reference"]
    return ModelBundle(
        model=model,  # type: ignore[arg-type]  # same interface as TwoStreamNet
        classes=list(payload["classes"]),
        reference_features=decompress_features(ref["features"]),
        reference_logits=ref["logits"].float(),
        reference_labels=ref["labels"].long(),
        thresholds=dict(payload.get("thresholds", {})),
        metrics=dict(payload.get("metrics", {})),
        train_config=dict(payload.get("train_config", {})),
    )
