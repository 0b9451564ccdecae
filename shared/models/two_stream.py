"""The SecDOOD base model: an RGB-clip stream and an optical-flow stream.

Each stream is a small 3D convolutional net *with BatchNorm* (LeanTTA adapts the
BatchNorm statistics on the device). The two pooled embeddings are concatenated
into the fused embedding ``z`` (default D = 128) that the OOD detectors, the
HyperNetwork and the selective encryption all work on. There is one linear head
per modality and one on the fused embedding (DESIGN §4).

Shapes: ``rgb`` float32 [N, T, 3, H, W] in [0, 1]; ``flow`` float32
[N, T-1, 2, H, W] (see :func:`shared.data.tensors.flow_to_tensor`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TwoStreamConfig:
    """Architecture hyperparameters; stored with every checkpoint."""

    num_classes: int = 6
    embed_dim: int = 128  # D: the fused embedding is split evenly between the streams
    widths: tuple[int, int, int] = (16, 32, 64)
    n_frames: int = 8
    size: int = 32

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.embed_dim < 2 or self.embed_dim % 2:
            raise ValueError(f"embed_dim must be an even number >= 2, got {self.embed_dim}")
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ValueError(f"widths must be three positive ints, got {self.widths}")
        if self.n_frames < 2 or self.size < 8:
            raise ValueError("n_frames must be >= 2 and size >= 8")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TwoStreamConfig:
        data = dict(data)
        data["widths"] = tuple(data.get("widths", cls.widths))
        return cls(**data)


def check_clip_inputs(config: TwoStreamConfig, rgb: torch.Tensor, flow: torch.Tensor) -> None:
    """Raise a ValueError that says what shape was expected (float and int8 models alike)."""
    t, s = config.n_frames, config.size
    if rgb.ndim != 5 or tuple(rgb.shape[1:]) != (t, 3, s, s):
        raise ValueError(f"rgb must be [N, {t}, 3, {s}, {s}], got {list(rgb.shape)}")
    if flow.ndim != 5 or tuple(flow.shape[1:]) != (t - 1, 2, s, s):
        raise ValueError(f"flow must be [N, {t - 1}, 2, {s}, {s}], got {list(flow.shape)}")
    if rgb.shape[0] != flow.shape[0]:
        raise ValueError(f"rgb has {rgb.shape[0]} clips but flow has {flow.shape[0]}")


def _conv_bn_relu(c_in: int, c_out: int, stride: tuple[int, int, int]) -> list[nn.Module]:
    return [
        nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    ]


class StreamEncoder(nn.Module):
    """Conv3d-BN-ReLU ×3 over [N, C, T, H, W], then a projection to ``out_dim``.

    The projection (Linear → BatchNorm1d → ReLU) keeps the embedding
    non-negative, which ReAct and ASH assume.
    """

    def __init__(self, in_channels: int, widths: tuple[int, int, int], out_dim: int) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, w1, stride=(1, 2, 2)),
            *_conv_bn_relu(w1, w2, stride=(2, 2, 2)),
            *_conv_bn_relu(w2, w3, stride=(1, 2, 2)),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.project = nn.Sequential(
            nn.Linear(w3, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(x))


@dataclass
class TwoStreamOutput:
    """Everything one forward pass produces; ``z`` is the fused embedding [N, D]."""

    z: torch.Tensor
    logits: torch.Tensor
    rgb_logits: torch.Tensor
    flow_logits: torch.Tensor


class TwoStreamNet(nn.Module):
    """RGB + flow encoders, fused embedding ``z`` and three linear heads."""

    def __init__(self, config: TwoStreamConfig | None = None) -> None:
        super().__init__()
        self.config = config or TwoStreamConfig()
        half = self.config.embed_dim // 2
        self.rgb_encoder = StreamEncoder(3, self.config.widths, half)
        self.flow_encoder = StreamEncoder(2, self.config.widths, half)
        self.rgb_head = nn.Linear(half, self.config.num_classes)
        self.flow_head = nn.Linear(half, self.config.num_classes)
        self.fused_head = nn.Linear(self.config.embed_dim, self.config.num_classes)

    def check_inputs(self, rgb: torch.Tensor, flow: torch.Tensor) -> None:
        check_clip_inputs(self.config, rgb, flow)

    def embed_streams(self, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-stream embeddings; the Conv3d wants channels before time."""
        self.check_inputs(rgb, flow)
        z_rgb = self.rgb_encoder(rgb.transpose(1, 2))
        z_flow = self.flow_encoder(flow.transpose(1, 2))
        return z_rgb, z_flow

    def embed(self, rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """The fused embedding z [N, D]."""
        return torch.cat(self.embed_streams(rgb, flow), dim=1)

    def forward_all(self, rgb: torch.Tensor, flow: torch.Tensor) -> TwoStreamOutput:
        z_rgb, z_flow = self.embed_streams(rgb, flow)
        z = torch.cat([z_rgb, z_flow], dim=1)
        return TwoStreamOutput(
            z=z,
            logits=self.fused_head(z),
            rgb_logits=self.rgb_head(z_rgb),
            flow_logits=self.flow_head(z_flow),
        )

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Fused-head logits [N, C] (what adaptation baselines such as TENT call)."""
        return self.fused_head(self.embed(rgb, flow))
