"""The SecDOOD HyperNetwork H: a (masked) device description in, a whole classifier out.

For an input u ∈ R^D and C classes, H produces Θ = [kernel (D×C), bias (C)] and the
personalised logits are ``z · kernel + bias`` computed on the device with the *full*
plaintext embedding z (ICCV 2025, "Secure On-Device Video OOD Detection Without
Backpropagation"). Variants:

- ``one_m`` (the paper's "oneM+bias"): kernel = Norm(u·W + b), bias = Norm(u·B + b_B);
- ``two_m`` (the paper's "twoM"): kernel = Norm((u·W₁ + b₁)·W₂ + b₂);
- ``device`` (default; trained for devices never seen): Θ = Θ_global + ((u − r)·U)·V, a
  rank-``hidden_dim`` correction of the global head driven by how the device's window
  mean u differs from a reference r (the mean embedding over the training devices). V
  starts at zero, so an untrained H *is* the global head, and training penalises
  ‖Θ − Θ_global‖² so a device unlike any seen in training stays near the global head.

The paper's variants take one sample z as u (per-sample mode); ``device`` takes the mean
of the device's recent window (per-device mode): one sample mixes "which class" with
"which camera", the window mean keeps mostly the camera.

Masking: an unselected channel is replaced by its reference value r_j (so it carries
"no information" rather than "zero"); H's input is x = m ⊙ (u − r). For ``one_m`` /
``two_m`` r = 0, which is the paper's zero masking.

Norm is a BatchNorm, affine at inference, so every variant is *affine in its input*:
Θ = x · A + c for one matrix A [D, D·C + C] and one vector c, which
:meth:`HyperNetwork.affine_map` folds out exactly. That is what lets the cloud evaluate H
on a CKKS ciphertext with plaintext weights in one multiplicative level (all variants
fold to the same depth), restricted to the rows of the channels the device encrypted:
``Enc(Θ) = Enc(u_sel)·A_sel + (c − r_sel·A_sel)`` (:func:`restricted_map`).

Θ layout (shared by cloud and device): ``theta[d * C + k] = kernel[d, k]`` for the
first D·C entries, then the C bias entries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from shared.embedding_adaptation import PLAIN, EmbeddingAdaptation
from shared.familiarity import FamiliarityReference
from shared.saved_files import check_format

HYPERNET_FORMAT = "secdood-hypernetwork"
HYPERNET_FORMAT_VERSION = 2
#: versions this build reads (version 1 had no ``reference``: zero, the paper's masking)
READABLE_FORMAT_VERSIONS = (1, 2)
VARIANTS: tuple[str, ...] = ("one_m", "two_m", "device")
Variant = Literal["one_m", "two_m", "device"]


@dataclass(frozen=True)
class HyperNetworkConfig:
    """Shape of H: embedding size D, classes C, variant, hidden width (``two_m``, ``device``)."""

    embed_dim: int = 128
    num_classes: int = 6
    variant: Variant = "one_m"
    hidden_dim: int = 64
    #: ``device`` variant: correct the whole Θ ("theta") or only the bias ("bias")
    correction: Literal["theta", "bias"] = "theta"

    def __post_init__(self) -> None:
        for name in ("embed_dim", "num_classes", "hidden_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.correction not in ("theta", "bias"):
            raise ValueError(f"correction must be 'theta' or 'bias', got {self.correction!r}")

    @property
    def theta_size(self) -> int:
        """Number of generated parameters D·C + C."""
        return self.embed_dim * self.num_classes + self.num_classes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyperNetworkConfig:
        keys = ("embed_dim", "num_classes", "variant", "hidden_dim", "correction")
        return cls(**{k: data[k] for k in keys if k in data})


class HyperNetwork(nn.Module):
    """H: masked, centred input x = m ⊙ (u − r) [N, D] → (kernel [N, D, C], bias [N, C])."""

    def __init__(self, config: HyperNetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config or HyperNetworkConfig()
        d, c = self.config.embed_dim, self.config.num_classes
        #: r: the value an unselected channel stands for (zero for the paper's variants)
        self.register_buffer("reference", torch.zeros(d))
        #: the training devices' window means, shipped to devices with Θ (``device`` variant)
        self.familiarity: FamiliarityReference | None = None
        #: the embeddings H reads (shared.embedding_adaptation); devices must send this kind
        self.embedding: EmbeddingAdaptation = PLAIN
        if self.config.variant == "device":
            self.register_buffer("head_theta", torch.zeros(d * c + c))
            self.down = nn.Linear(d, self.config.hidden_dim, bias=False)
            corrected = d * c + c if self.config.correction == "theta" else c
            self.up = nn.Linear(self.config.hidden_dim, corrected)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
            return
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
        if self.config.variant == "device":
            self.head_theta.copy_(torch.cat([weight.T.reshape(-1), bias]))
            return
        self.kernel_norm.bias.copy_(weight.T.reshape(-1))
        self.kernel_norm.weight.fill_(spread)
        self.bias_norm.bias.copy_(bias)
        self.bias_norm.weight.fill_(spread)

    @torch.no_grad()
    def set_reference(self, reference: torch.Tensor) -> None:
        """Set r [D], the value an unselected channel stands for (``device`` variant)."""
        if tuple(reference.shape) != (self.config.embed_dim,):
            raise ValueError(
                f"reference must be [{self.config.embed_dim}], got {list(reference.shape)}"
            )
        self.reference.copy_(reference)

    def masked_input(self, u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x = m ⊙ (u − r): what H reads from descriptions u [N, D] and masks m [N, D]."""
        return mask * (u - self.reference)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x = m ⊙ (u − r) [N, D] → kernel [N, D, C], bias [N, C]."""
        d, c = self.config.embed_dim, self.config.num_classes
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"H takes inputs [N, {d}], got {list(x.shape)}")
        if self.config.variant == "device":
            theta = self.head_theta + self._correction_rows(self.up(self.down(x)))
            return theta[:, : d * c].reshape(-1, d, c), theta[:, d * c :]
        kernel = self.kernel_norm(self.kernel_map(x)).view(-1, d, c)
        bias = self.bias_norm(self.bias_map(x))
        return kernel, bias

    def _correction_rows(self, delta: torch.Tensor) -> torch.Tensor:
        """Place a bias-only correction [..., C] into Θ's layout [..., D·C + C] (zeros first)."""
        if self.config.correction == "theta":
            return delta
        zeros = delta.new_zeros(*delta.shape[:-1], self.config.embed_dim * self.config.num_classes)
        return torch.cat([zeros, delta], dim=-1)

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """Flat Θ [N, D·C + C] in the shared layout (kernel row-major, then bias)."""
        kernel, bias = self(x)
        return torch.cat([kernel.flatten(1), bias], dim=1)

    @torch.no_grad()
    def affine_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [D, D·C + C], c [D·C + C]) with Θ = x·A + c exactly, in eval mode (float64).

        Folds the linear layer(s) and the BatchNorms' running statistics:
        BN(x) = (x − μ)·s + β with s = γ/√(σ² + ε).
        """
        if self.training:
            raise RuntimeError("affine_map() folds eval-mode BatchNorm: call .eval() first")
        if self.config.variant == "device":
            a, c = _linear_chain(nn.Sequential(self.down, self.up))
            a, c = self._correction_rows(a), self._correction_rows(c)
            return a, c + self.head_theta.double()
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
        b = layer.bias.double() if layer.bias is not None else torch.zeros(w.shape[1]).double()
        a, c = (w, b) if a is None else (a @ w, c @ w + b)
    assert a is not None and c is not None
    return a, c


def _fold_norm(
    a: torch.Tensor, c: torch.Tensor, norm: nn.BatchNorm1d
) -> tuple[torch.Tensor, torch.Tensor]:
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    return a * scale, (c - norm.running_mean.double()) * scale + norm.bias.double()


def restricted_map(
    a: np.ndarray, c: np.ndarray, reference: np.ndarray, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, offset) with Θ = u[indices]·rows + offset: H on the selected channels only.

    The other channels stand at their reference value (x_j = 0), so they drop out;
    the selected ones enter as u_j − r_j, whose constant part moves into the offset.
    """
    rows = a[indices]
    return rows, c - reference[indices] @ rows


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
    state = {
        "format": HYPERNET_FORMAT,
        "format_version": HYPERNET_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "base_model_sha256": base_model_sha256,
    }
    if model.embedding != PLAIN:  # absent: plain, as every H before LeanTTA embeddings
        state["embedding"] = model.embedding.key
    if model.familiarity is not None:
        state["familiarity"] = {
            "means": torch.from_numpy(np.array(model.familiarity.means, dtype=np.float32)),
            "scale": float(model.familiarity.scale),
        }
    return state


def hypernet_from_state(state: dict[str, Any]) -> HyperNetwork:
    """Rebuild an eval-mode H from :func:`hypernet_state`; ValueError if it is not one."""
    check_format(state, HYPERNET_FORMAT, READABLE_FORMAT_VERSIONS, "SecDOOD hypernetwork state")
    model = HyperNetwork(HyperNetworkConfig.from_dict(state["config"]))
    weights = dict(state["state_dict"])
    weights.setdefault("reference", torch.zeros(model.config.embed_dim))  # version 1
    model.load_state_dict(weights)
    model.embedding = EmbeddingAdaptation.from_key(str(state.get("embedding", "none")))
    familiarity = state.get("familiarity")  # absent before the familiarity gate
    if familiarity is not None:
        model.familiarity = FamiliarityReference(
            familiarity["means"].numpy(), float(familiarity["scale"])
        )
    return model.eval()
