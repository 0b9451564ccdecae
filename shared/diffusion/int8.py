"""int8 weights for the denoiser on the device (weight-only quantisation, W8A32).

Every ``nn.Conv2d`` / ``nn.Linear`` weight is stored as symmetric per-output-channel int8
(``shared.models.int8.quantize_weight_per_channel``: range [-127, 127], one float scale per
channel) and *stays int8 in memory*; a layer dequantises its own weight for the duration of one
call (``q * scale``) and runs the float convolution, so at most one layer's float weight exists
at a time. Biases, GroupNorm and the token table stay float (a few hundred numbers).

Why weight-only and not int8 activations: zeroth-order textual inversion differentiates the loss
by finite differences with eps = 1e-3 on the token; int8 activations round such a perturbation
away (a step of the activation grid is ~1e-2), so the loss would be piecewise constant in the
token. The quantised models ZOODiP personalises are weight-quantised for the same reason.
Why not an int8 GEMM: torch's CPU weight-only int8 kernel (``torch._weight_int8pack_mm``) measured
~36x slower than the float matmul on the shapes here (x86, torch 2.13; docs/algorithms/zoodip.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from shared.diffusion.denoiser import Denoiser, DenoiserConfig
from shared.models.int8 import quantize_weight_per_channel


class Int8Conv2d(nn.Module):
    """A Conv2d whose weight is held as int8 + per-output-channel scale."""

    def __init__(self, qweight: Tensor, scale: Tensor, bias: Tensor | None, stride, padding):
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 4 or scale.shape != qweight.shape[:1]:
            raise ValueError(
                "Int8Conv2d needs an int8 weight [C_out, C_in, k, k] and scale [C_out]"
            )
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", None if bias is None else bias.float())
        self.stride, self.padding = tuple(stride), tuple(padding)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.qweight.float() * self.scale[:, None, None, None]
        return nn.functional.conv2d(x, weight, self.bias, self.stride, self.padding)


class Int8Linear(nn.Module):
    """A Linear whose weight is held as int8 + per-output-row scale."""

    def __init__(self, qweight: Tensor, scale: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2 or scale.shape != qweight.shape[:1]:
            raise ValueError("Int8Linear needs an int8 weight [out, in] and scale [out]")
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", None if bias is None else bias.float())

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.qweight.float() * self.scale[:, None], self.bias)


def quantize_denoiser_state(model: Denoiser) -> dict[str, Any]:
    """Payload of int8 tensors: ``{"int8": {layer: {q, scale, bias}}, "float": {name: tensor}}``.

    ``float`` holds every parameter/buffer not belonging to a quantised layer.
    """
    int8: dict[str, dict[str, Tensor | None]] = {}
    quantised_names: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            q, scale = quantize_weight_per_channel(module.weight)
            bias = None if module.bias is None else module.bias.detach().float().clone()
            int8[name] = {"q": q, "scale": scale, "bias": bias}
            quantised_names.update({f"{name}.weight", f"{name}.bias"})
    rest = {
        k: v.detach().clone() for k, v in model.state_dict().items() if k not in quantised_names
    }
    return {"int8": int8, "float": rest}


def build_int8_denoiser(config: DenoiserConfig, payload: dict[str, Any]) -> Denoiser:
    """A :class:`Denoiser` whose conv/linear layers are int8 (inference only, frozen)."""
    model = Denoiser(config)
    for name, entry in payload["int8"].items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        if isinstance(old, nn.Conv2d):
            new: nn.Module = Int8Conv2d(
                entry["q"], entry["scale"], entry["bias"], old.stride, old.padding
            )
        elif isinstance(old, nn.Linear):
            new = Int8Linear(entry["q"], entry["scale"], entry["bias"])
        else:
            raise ValueError(f"int8 payload names {name!r}, which is not a conv/linear layer")
        setattr(parent, attr, new)
    missing, unexpected = model.load_state_dict(payload["float"], strict=False)
    held_by_int8 = {f"{n}.{b}" for n in payload["int8"] for b in ("qweight", "scale", "bias")}
    leftover = [k for k in missing if k not in held_by_int8]
    if leftover or unexpected:
        raise ValueError(
            f"int8 denoiser payload does not match: missing {leftover}, unexpected {unexpected}"
        )
    model.requires_grad_(False)
    return model.eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers as held in memory."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
