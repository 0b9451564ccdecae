"""LeanTTA: stateless, backpropagation-free test-time adaptation of BatchNorm layers.

Source: "LeanTTA" (arXiv 2503.15889); design facts restated in ALGORITHMS.md and DESIGN.md §6.
For every BatchNorm layer chosen for adaptation and for every sample *separately*:

1. target statistics ``mu_t``, ``var_t`` per channel over all non-channel dimensions of that one
   sample (biased variance); for int8 activations from the integer representation,
   ``mu_t = scale * (mean(q) - zero_point)`` and ``var_t = var(q) * scale**2``;
2. stabilise towards the source: ``mu_b = tau * mu_s + (1 - tau) * mu_t`` (same for the variance);
3. divergence ``m = sum_c (mu_b - mu_s)**2 / (var_s + 1e-6)`` and weight
   ``w = lam * (1 - exp(-m))``;
4. blend back: ``mu = w * mu_s + (1 - w) * mu_b`` (same for the variance);
5. normalise with ``(mu, var)`` and the layer's affine ``gamma``, ``beta``.

Nothing is written back: the source statistics are read-only buffers, so a batch of N samples
gives exactly the output of N separate calls. Partial adaptation (:func:`apply_leantta` with
``first_k``) adapts only the first k BatchNorm layers; the rest can be folded into the preceding
convolution / linear layer (:func:`fold_batchnorm`) so they cost nothing at inference.
"""

from __future__ import annotations

import copy
from collections.abc import Collection

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

# Guards the divergence denominator against channels whose source variance is ~0 (ALGORITHMS.md).
_DIVERGENCE_EPS = 1e-6

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _check_activation_shape(x: Tensor, num_features: int) -> None:
    if x.dim() < 2:
        raise ValueError(f"expected activations of shape (N, C, ...), got shape {tuple(x.shape)}")
    if x.shape[1] != num_features:
        raise ValueError(f"expected {num_features} channels in dim 1, got shape {tuple(x.shape)}")


def _reduce_dims(x: Tensor) -> list[int]:
    """Every dimension except batch (0) and channel (1): one sample's statistics per channel."""
    return list(range(2, x.dim()))


def _per_sample_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and biased variance of float ``x`` (N, C, *) -> (N, C) each.

    A (N, C) input has one value per channel and sample, so its variance is 0.
    """
    dims = _reduce_dims(x)
    if not dims:
        return x.clone(), torch.zeros_like(x)
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    return mean, var


def integer_stats(q: Tensor, scale: float, zero_point: int) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and biased variance of an affine-quantised activation.

    ``q`` holds the integer representation, shape (N, C, *) (any integer dtype); the real value
    is ``scale * (q - zero_point)``. Returns ``(mean, var)``, each (N, C) float32, computed from
    the integers: ``mean = scale * (mean(q) - zero_point)``, ``var = var(q) * scale**2``.
    """
    if not isinstance(q, Tensor) or q.is_floating_point() or q.is_quantized or q.is_complex():
        raise TypeError(
            "integer_stats expects a plain integer tensor (e.g. q.int_repr()), "
            f"got {type(q).__name__} with dtype {getattr(q, 'dtype', None)}"
        )
    if q.dim() < 2:
        raise ValueError(f"expected integers of shape (N, C, ...), got shape {tuple(q.shape)}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    # float64 keeps the integer sums exact enough for large spatial extents.
    int_mean, int_var = _per_sample_stats(q.to(torch.float64))
    mean = scale * (int_mean - float(zero_point))
    var = int_var * scale**2
    return mean.to(torch.float32), var.to(torch.float32)


class LeanTTANorm(nn.Module):
    """Drop-in replacement for a ``BatchNorm1d/2d/3d`` that adapts per sample, statelessly.

    Built from a trained BatchNorm: its running mean/variance become the source statistics and
    its affine parameters are kept. Accepts float activations or per-tensor quantised tensors
    (``torch.quantize_per_tensor``); the output is always float32 of the input's shape.
    Runs under ``torch.no_grad``: it has no trainable parameters and never backpropagates.
    """

    def __init__(self, bn: _BatchNorm, tau: float = 0.9, lam: float = 0.9) -> None:
        super().__init__()
        if not isinstance(bn, _BatchNorm):
            raise TypeError(f"LeanTTANorm wraps a torch BatchNorm layer, got {type(bn).__name__}")
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(
                "LeanTTANorm needs source statistics: the BatchNorm must have "
                "track_running_stats=True (running_mean / running_var are None)"
            )
        for name, value in (("tau", tau), ("lam", lam)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        self.tau = float(tau)
        self.lam = float(lam)
        self.eps = float(bn.eps)
        self.num_features = int(bn.num_features)
        self.register_buffer("source_mean", bn.running_mean.detach().clone().float())
        self.register_buffer("source_var", bn.running_var.detach().clone().float())
        if bn.affine:
            weight = bn.weight.detach().clone().float()
            bias = bn.bias.detach().clone().float()
        else:
            weight = torch.ones(self.num_features)
            bias = torch.zeros(self.num_features)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, tau={self.tau}, lam={self.lam}, eps={self.eps}"

    def blended_stats(self, mean_t: Tensor, var_t: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample statistics to normalise with, from target stats (N, C) -> (N, C) each."""
        mu_s, var_s = self.source_mean, self.source_var
        mean_b = self.tau * mu_s + (1.0 - self.tau) * mean_t
        var_b = self.tau * var_s + (1.0 - self.tau) * var_t
        divergence = ((mean_b - mu_s) ** 2 / (var_s + _DIVERGENCE_EPS)).sum(dim=1, keepdim=True)
        w = self.lam * (1.0 - torch.exp(-divergence))  # (N, 1): trust the source more when far
        mean = w * mu_s + (1.0 - w) * mean_b
        var = w * var_s + (1.0 - w) * var_b
        return mean, var

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (N, C, *) float or per-tensor quantised; returns float32 (N, C, *)."""
        if x.is_quantized:
            if x.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                raise ValueError(
                    f"only per-tensor quantised activations are supported, got {x.qscheme()}"
                )
            _check_activation_shape(x, self.num_features)
            mean_t, var_t = integer_stats(x.int_repr(), x.q_scale(), x.q_zero_point())
            x = x.dequantize()
        elif x.is_floating_point():
            _check_activation_shape(x, self.num_features)
            x = x.float()
            mean_t, var_t = _per_sample_stats(x)
        else:
            raise TypeError(
                f"LeanTTANorm expects a float or quantised tensor, got dtype {x.dtype}; "
                "for raw integers call integer_stats with the producing layer's scale/zero point"
            )
        mean, var = self.blended_stats(mean_t, var_t)
        trailing = (1,) * (x.dim() - 2)
        per_sample = (x.shape[0], self.num_features) + trailing
        scale = (self.weight / torch.sqrt(var + self.eps)).reshape(per_sample)
        shift = (
            self.bias.reshape((1, self.num_features) + trailing) - mean.reshape(per_sample) * scale
        )
        return x * scale + shift


def batchnorm_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's BatchNorm layers, in module registration order."""
    return [name for name, module in model.named_modules() if isinstance(module, _BatchNorm)]


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def apply_leantta(
    model: nn.Module,
    first_k: int | None = None,
    tau: float = 0.9,
    lam: float = 0.9,
    fold_remaining: bool = False,
    names: Collection[str] | None = None,
) -> nn.Module:
    """Deep copy of ``model`` whose first ``first_k`` BatchNorm layers are :class:`LeanTTANorm`.

    "First" is module registration order (``model.named_modules()``), which for networks built
    top to bottom is the order of the forward pass. For a two-stream model that order runs
    through one stream's layers (and its projection) before the other's: pass ``names`` (from
    :func:`batchnorm_names`) instead of ``first_k`` to choose layers in both streams.
    ``first_k=None`` and ``names=None`` adapt every BatchNorm. A BatchNorm1d on (N, C) inputs
    sees one value per channel and sample (variance 0), so adapting it is rarely useful. With
    ``fold_remaining`` the layers not adapted are folded into their preceding conv/linear (see
    :func:`fold_batchnorm`). The copy is in eval mode with ``requires_grad=False`` everywhere;
    ``model`` itself is not modified.
    """
    all_names = batchnorm_names(model)
    if names is not None:
        if first_k is not None:
            raise ValueError("pass either first_k or names, not both")
        chosen = list(names)
        unknown = sorted(set(chosen) - set(all_names))
        if unknown:
            raise ValueError(f"names lists no BatchNorm layer of this model: {unknown}")
    else:
        if first_k is None:
            first_k = len(all_names)
        if isinstance(first_k, bool) or not isinstance(first_k, int):
            raise TypeError(f"first_k must be an int or None, got {type(first_k).__name__}")
        if not 0 <= first_k <= len(all_names):
            raise ValueError(
                f"first_k must lie in [0, {len(all_names)}] for this model, got {first_k}"
            )
        chosen = all_names[:first_k]
    adapted = copy.deepcopy(model).eval()
    for name in chosen:
        _set_submodule(adapted, name, LeanTTANorm(adapted.get_submodule(name), tau=tau, lam=lam))
    if fold_remaining:
        adapted = fold_batchnorm(adapted)
    for parameter in adapted.parameters():
        parameter.requires_grad_(False)
    return adapted


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: _BatchNorm) -> None:
    """Fold eval-mode ``bn`` into ``layer`` in place: W' = W·γ/√(σ²+ε), b' = β + (b−μ)·γ/√(σ²+ε)."""
    out_features = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if bn.num_features != out_features:
        raise ValueError(
            f"cannot fold {type(bn).__name__}({bn.num_features}) into {type(layer).__name__} "
            f"with {out_features} outputs"
        )
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    factor = gamma / torch.sqrt(bn.running_var + bn.eps)  # (out,)
    old_bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    # Conv weights are (out, in/groups, *kernel) and Linear weights (out, in): scale dim 0.
    layer.weight.mul_(factor.reshape((-1,) + (1,) * (layer.weight.dim() - 1)))
    new_bias = beta + (old_bias - bn.running_mean) * factor
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.clone())
    else:
        layer.bias.copy_(new_bias)


def fold_batchnorm(model: nn.Module, skip: Collection[str] = ()) -> nn.Module:
    """Deep copy of ``model`` with each BatchNorm folded into the layer just before it.

    A BatchNorm is folded when it directly follows a ``Conv1d/2d/3d`` or ``Linear`` inside the
    same ``nn.Sequential`` (the generic "module immediately followed by a BN" case) and has
    running statistics; it is then replaced by ``nn.Identity``. BatchNorms named in ``skip``
    (qualified names as in :func:`batchnorm_names`), :class:`LeanTTANorm` layers and BatchNorms
    in any other position are left untouched. The result equals ``model`` in eval mode (it is
    returned in eval mode: folding freezes the running statistics).
    """
    skip = set(skip)
    unknown = skip - set(batchnorm_names(model))
    if unknown:
        raise ValueError(f"skip names no BatchNorm layer of this model: {sorted(unknown)}")
    folded = copy.deepcopy(model).eval()
    for container_name, container in list(folded.named_modules()):
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container.named_children())
        for (_, previous), (child_name, child) in zip(children, children[1:], strict=False):
            qualified = f"{container_name}.{child_name}" if container_name else child_name
            if (
                isinstance(child, _BatchNorm)
                and isinstance(previous, _FOLDABLE)
                and child.running_mean is not None
                and qualified not in skip
            ):
                _fold_into(previous, child)
                setattr(container, child_name, nn.Identity())
    return folded
