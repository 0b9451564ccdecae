"""The SecDOOD HyperNetwork H: a (masked) embedding in, a whole fused classifier out.

For an embedding z ∈ R^D and C classes, H produces Θ = [kernel (D×C), bias (C)]
and the personalised logits are ``z · kernel + bias`` computed on the device with
the *full* plaintext z (ICCV 2025, "Secure On-Device Video OOD Detection Without
Backpropagation"; the reference's "oneM+bias" and "twoM" variants):

- ``one_m`` (default): kernel = Norm(z·W + b), bias = Norm(z·B + b_B);
- ``two_m``: kernel = Norm((z·W₁ + b₁)·W₂ + b₂) — a hidden linear layer, no nonlinearity.

Norm is a BatchNorm, affine at inference, so H is *affine in its input*:
Θ = z_m · A + c for one matrix A [D, D·C + C] and one vector c, which
:meth:`HyperNetwork.affine_map` folds out exactly. That is what lets the cloud
evaluate H on a CKKS ciphertext with plaintext weights in one multiplicative
level (both variants fold to the same depth), and restrict it to the rows of
the channels the device encrypted: masking channel j to zero equals dropping row j.

Θ layout (shared by cloud and device): ``theta[d * C + k] = kernel[d, k]`` for the
first D·C entries, then the C bias entries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

HYPERNET_FORMAT = "secdood-hypernetwork"
HYPERNET_FORMAT_VERSION = 1
VARIANTS: tuple[str, ...] = ("one_m", "two_m")


@dataclass(frozen=True)
class HyperNetworkConfig:
    """Shape of H: embedding size D, classes C, variant, hidden width of ``two_m``."""

    embed_dim: int = 128
    num_classes: int = 6
    variant: Literal["one_m", "two_m"] = "one_m"
    hidden_dim: int = 64

    def __post_init__(self) -> None:
        for name in ("embed_dim", "num_classes", "hidden_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")

    @property
    def theta_size(self) -> int:
        """Number of generated parameters D·C + C."""
        return self.embed_dim * self.num_classes + self.num_classes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyperNetworkConfig:
        return cls(**{k: data[k] for k in ("embed_dim", "num_classes", "variant", "hidden_dim")})


class HyperNetwork(nn.Module):
    """H: masked embedding z_m [N, D] → (kernel [N, D, C], bias [N, C])."""

    def __init__(self, config: HyperNetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config or HyperNetworkConfig()
        d, c = self.config.embed_dim, self.config.num_classes
        if self.config.variant == "one_m":
            self.kernel_map: nn.Module = nn.Linear(d, d * c)
        else:
            hidden = self.config.hidden_dim
            self.kernel_map = nn.Sequential(nn.Linear(d, hidden), nn.Linear(hidden, d * c))
        self.kernel_norm = nn.BatchNorm1d(d * c)
        self.bias_map = nn.Linear(d, c)
        self.bias_norm = nn.BatchNorm1d(c)

    @torch.no_grad()
    def init_from_head(
        self, weight: torch.Tensor, bias: torch.Tensor, spread: float = 0.01
    ) -> None:
        """Start at a given linear head (weight [C, D], bias [C]): Θ ≈ that head for every z.

        The BatchNorm shifts β become the head's parameters and the scales γ become
        ``spread``, so training begins from the global classifier and learns how
        each sample should move away from it.
        """
        d, c = self.config.embed_dim, self.config.num_classes
        if tuple(weight.shape) != (c, d) or tuple(bias.shape) != (c,):
            raise ValueError(
                f"head must be weight [{c}, {d}] and bias [{c}], got "
                f"{list(weight.shape)} and {list(bias.shape)}"
            )
        self.kernel_norm.bias.copy_(weight.T.reshape(-1))
        self.kernel_norm.weight.fill_(spread)
        self.bias_norm.bias.copy_(bias)
        self.bias_norm.weight.fill_(spread)

    def forward(self, z_masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_m [N, D] → kernel [N, D, C], bias [N, C]."""
        d, c = self.config.embed_dim, self.config.num_classes
        if z_masked.ndim != 2 or z_masked.shape[1] != d:
            raise ValueError(f"H takes embeddings [N, {d}], got {list(z_masked.shape)}")
        kernel = self.kernel_norm(self.kernel_map(z_masked)).view(-1, d, c)
        bias = self.bias_norm(self.bias_map(z_masked))
        return kernel, bias

    def theta(self, z_masked: torch.Tensor) -> torch.Tensor:
        """Flat Θ [N, D·C + C] in the shared layout (kernel row-major, then bias)."""
        kernel, bias = self(z_masked)
        return torch.cat([kernel.flatten(1), bias], dim=1)

    @torch.no_grad()
    def affine_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [D, D·C + C], c [D·C + C]) with Θ = z_m·A + c exactly, in eval mode (float64).

        Folds the linear layer(s) and the BatchNorms' running statistics:
        BN(x) = (x − μ)·s + β with s = γ/√(σ² + ε).
        """
        if self.training:
            raise RuntimeError("affine_map() folds eval-mode BatchNorm: call .eval() first")
        kernel_a, kernel_c = _linear_chain(self.kernel_map)
        bias_a, bias_c = _linear_chain(self.bias_map)
        kernel_a, kernel_c = _fold_norm(kernel_a, kernel_c, self.kernel_norm)
        bias_a, bias_c = _fold_norm(bias_a, bias_c, self.bias_norm)
        return torch.cat([kernel_a, bias_a], dim=1), torch.cat([kernel_c, bias_c])


def _linear_chain(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear or a Sequential of Linears as one affine map x·A + c (float64)."""
    layers = list(module) if isinstance(module, nn.Sequential) else [module]
    a: torch.Tensor | None = None
    c: torch.Tensor | None = None
    for layer in layers:
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"only Linear layers fold into an affine map, got {type(layer)}")
        w = layer.weight.double().T  # [in, out]
        b = layer.bias.double()
        a, c = (w, b) if a is None else (a @ w, c @ w + b)
    assert a is not None and c is not None
    return a, c


def _fold_norm(
    a: torch.Tensor, c: torch.Tensor, norm: nn.BatchNorm1d
) -> tuple[torch.Tensor, torch.Tensor]:
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    return a * scale, (c - norm.running_mean.double()) * scale + norm.bias.double()


def split_theta(theta: torch.Tensor, embed_dim: int, num_classes: int) -> tuple[torch.Tensor, ...]:
    """Θ [..., D·C + C] → kernel [..., D, C], bias [..., C]."""
    size = embed_dim * num_classes + num_classes
    if theta.shape[-1] != size:
        raise ValueError(f"theta must end in D·C + C = {size} values, got {theta.shape[-1]}")
    kernel = theta[..., : embed_dim * num_classes].reshape(
        *theta.shape[:-1], embed_dim, num_classes
    )
    return kernel, theta[..., embed_dim * num_classes :]


def personalised_logits(z: torch.Tensor, theta: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits z·kernel + bias with the full plaintext embedding.

    z: [N, D]; theta: [N, D·C + C] (per-sample) or [D·C + C] (one Θ for all rows,
    the per-device mode). Returns [N, C].
    """
    z = torch.as_tensor(z)
    theta = torch.as_tensor(theta, dtype=z.dtype)
    if z.ndim != 2:
        raise ValueError(f"z must be [N, D], got {list(z.shape)}")
    kernel, bias = split_theta(theta, z.shape[1], num_classes)
    if theta.ndim == 1:
        return z @ kernel + bias
    if theta.shape[0] != z.shape[0]:
        raise ValueError(f"per-sample theta needs {z.shape[0]} rows, got {theta.shape[0]}")
    return torch.einsum("nd,ndc->nc", z, kernel) + bias


def hypernet_state(model: HyperNetwork, base_model_sha256: str = "") -> dict[str, Any]:
    """What a trained H is stored as (tensors and plain values only; loads weights_only)."""
    return {
        "format": HYPERNET_FORMAT,
        "format_version": HYPERNET_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "base_model_sha256": base_model_sha256,
    }


def hypernet_from_state(state: dict[str, Any]) -> HyperNetwork:
    """Rebuild an eval-mode H from :func:`hypernet_state`; ValueError if it is not one."""
    if not isinstance(state, dict) or state.get("format") != HYPERNET_FORMAT:
        raise ValueError(f"not a SecDOOD hypernetwork state (expected format {HYPERNET_FORMAT!r})")
    if state.get("format_version") != HYPERNET_FORMAT_VERSION:
        raise ValueError(
            f"hypernetwork format version {state.get('format_version')} is not supported "
            f"(this build reads {HYPERNET_FORMAT_VERSION})"
        )
    model = HyperNetwork(HyperNetworkConfig.from_dict(state["config"]))
    model.load_state_dict(state["state_dict"])
    return model.eval()
