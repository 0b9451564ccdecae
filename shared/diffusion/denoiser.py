"""The conditional denoiser: a small UNet that predicts the noise in a 16x16 digit.

Conditioning is a *token*: a learned vector of ``token_dim`` per class (``tokens``, the model's
vocabulary, like a text encoder's word embeddings). Textual inversion learns a new vector for a
new concept and feeds it through the same path, leaving every weight frozen. The token and the
sinusoidal timestep embedding are mapped to one conditioning vector ``c``; each residual block
adds a per-channel shift computed from ``c`` (FiLM-style bias) after its first convolution.

Layout (channels ``w``, ``2w``): conv_in -> res(w) @16x16 -> down (stride 2) -> res(2w) @8x8
-> res(2w) -> up (nearest x2 + conv) -> concat skip -> res(2w -> w) -> GroupNorm, SiLU, conv_out.
Every ``nn.Conv2d`` / ``nn.Linear`` is replaced by its int8 counterpart on the device
(:mod:`shared.diffusion.int8`); GroupNorm and the token table stay float.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from shared.diffusion import IMAGE_SIZE, NUM_CLASSES


@dataclass(frozen=True)
class DenoiserConfig:
    """Architecture of :class:`Denoiser` (saved with the artifact)."""

    width: int = 16
    token_dim: int = 32
    cond_dim: int = 64
    num_classes: int = NUM_CLASSES
    groups: int = 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenoiserConfig:
        return cls(**{k: int(v) for k, v in data.items()})


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of integer timesteps ``t`` [B] -> [B, dim] (Transformer style)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """GN-SiLU-conv, + shift from the conditioning vector, GN-SiLU-conv, residual."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.cond = nn.Linear(cond_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.cond(c)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return h + self.skip(x)


class Denoiser(nn.Module):
    """``eps_theta(x_t, t, token)``: noise prediction for images [B, 1, 16, 16] in [-1, 1]."""

    def __init__(self, config: DenoiserConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DenoiserConfig()
        w, cd, g = cfg.width, cfg.cond_dim, cfg.groups
        self.tokens = nn.Embedding(cfg.num_classes, cfg.token_dim)
        nn.init.normal_(self.tokens.weight, std=1.0)
        # 1 for classes the denoiser was trained on; training zeroes the held-out class
        self.register_buffer("trained_classes", torch.ones(cfg.num_classes))
        self.time_mlp = nn.Sequential(nn.Linear(cd, cd), nn.SiLU(), nn.Linear(cd, cd))
        self.token_proj = nn.Linear(cfg.token_dim, cd)
        self.conv_in = nn.Conv2d(1, w, 3, padding=1)
        self.res_hi = ResBlock(w, w, cd, g)
        self.down = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.res_lo = ResBlock(2 * w, 2 * w, cd, g)
        self.res_mid = ResBlock(2 * w, 2 * w, cd, g)
        self.up = nn.Conv2d(2 * w, w, 3, padding=1)
        self.res_out = ResBlock(2 * w, w, cd, g)
        self.norm_out = nn.GroupNorm(g, w)
        self.conv_out = nn.Conv2d(w, 1, 3, padding=1)

    @property
    def token_dim(self) -> int:
        return self.config.token_dim

    def check_inputs(self, x: Tensor, t: Tensor, token: Tensor) -> None:
        """ValueError unless x is [B, 1, 16, 16], t is [B] int64 and token is [B, token_dim]."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"images must be [B, 1, {IMAGE_SIZE}, {IMAGE_SIZE}], got {tuple(x.shape)}"
            )
        if t.shape != (x.shape[0],) or t.dtype != torch.long:
            raise ValueError(f"timesteps must be int64 [B={x.shape[0]}], got {t.dtype} {t.shape}")
        if token.shape != (x.shape[0], self.token_dim):
            raise ValueError(
                f"tokens must be [B={x.shape[0]}, {self.token_dim}], got {tuple(token.shape)}"
            )

    def forward(self, x: Tensor, t: Tensor, token: Tensor) -> Tensor:
        self.check_inputs(x, t, token)
        c = self.time_mlp(timestep_embedding(t, self.config.cond_dim)) + self.token_proj(token)
        c = nn.functional.silu(c)
        h0 = self.conv_in(x)
        h1 = self.res_hi(h0, c)
        h = self.res_lo(self.down(h1), c)
        h = self.res_mid(h, c)
        h = self.up(nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.res_out(torch.cat([h, h1], dim=1), c)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))

    def class_token(self, labels: Tensor) -> Tensor:
        """The vocabulary's tokens for class ids ``labels`` [B] -> [B, token_dim]."""
        return self.tokens(labels)

    def initial_token(self) -> Tensor:
        """Where textual inversion starts: the mean of the trained class tokens, [token_dim].

        ``trained_classes`` (a buffer set by training) excludes the held-out class, whose row of
        the table was never trained.
        """
        rows = self.tokens.weight.detach()
        return rows[self.trained_classes.bool()].mean(dim=0).clone()
