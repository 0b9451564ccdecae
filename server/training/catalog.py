"""Every method the cloud can train, by name.

Method modules are imported lazily so that listing or validating a method does
not import every other method's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from server.training.base import MethodTrainer
from shared.model_names import BASE_MODEL, DIFFUSION_MODEL, HYPERNETWORK
from shared.validation import validation_message

#: method name → "module:attribute" of its trainer object
METHOD_PATHS: dict[str, str] = {
    BASE_MODEL: "server.training.base_model:TRAINER",
    HYPERNETWORK: "server.training.hypernetwork:TRAINER",
    # Forward-Forward spiking net and its two baselines (docs/algorithms.md)
    "ff_snn": "server.training.forward_forward:FF_SNN_TRAINER",
    "ff": "server.training.forward_forward:FF_TRAINER",
    "bp_snn": "server.training.forward_forward:BP_SNN_TRAINER",
    # predictive coding: inference learning, zero-divergence IL, fully autonomous Z-IL
    "il": "server.training.predictive_coding:IL_TRAINER",
    "zil": "server.training.predictive_coding:ZIL_TRAINER",
    "fa_zil": "server.training.predictive_coding:FA_ZIL_TRAINER",
    "pc_bp": "server.training.predictive_coding:BP_TRAINER",
    # Expectation Backpropagation (binary weights, mean-field)
    "ebp": "server.training.ebp:TRAINER",
    # Boolean backpropagation (bit-packed XNOR-majority network, purely logical updates)
    "boolean_bp": "server.training.boolean_bp:TRAINER",
    # spike-train-level recurrent SNN and its BPTT baseline
    "st_rsbp": "server.training.st_rsbp:TRAINER",
    "bptt_rsnn": "server.training.st_rsbp:BPTT_TRAINER",
    # LACTOSE: one parameter set per interval of a conditioning input
    "lactose": "server.training.lactose:TRAINER",
    # tiny class-conditional DDPM; devices personalise it by ZO textual inversion (ZOODiP)
    DIFFUSION_MODEL: "server.training.diffusion:TRAINER",
}

#: one line per method for ``secdood-server methods`` (docs/algorithms.md has the details)
METHOD_SUMMARIES: dict[str, str] = {
    BASE_MODEL: "SecDOOD two-stream (RGB + optical flow) video model with OOD detectors",
    HYPERNETWORK: "SecDOOD HyperNetwork: a device's classifier from its (encrypted) embedding",
    "ff_snn": "Forward-Forward spiking net: layer-local goodness of LIF spike counts",
    "ff": "Forward-Forward with ReLU layers (non-spiking baseline)",
    "bp_snn": "spiking net trained by backprop through time (baseline for ff_snn)",
    "il": "predictive coding, inference learning",
    "zil": "predictive coding, zero-divergence inference learning (equals backprop)",
    "fa_zil": "predictive coding, fully autonomous Z-IL",
    "pc_bp": "the same network trained by backprop (baseline for il/zil/fa_zil)",
    "ebp": "Expectation Backpropagation: mean-field binary weights, no learning rate",
    "boolean_bp": "Boolean backprop: bit-packed XNOR-majority net, purely logical updates",
    "st_rsbp": "recurrent spiking net trained at spike-train level (no unrolling in time)",
    "bptt_rsnn": "the same recurrent spiking net trained through time (baseline for st_rsbp)",
    "lactose": "LACTOSE: one parameter set per interval of a conditioning input (waveshaper)",
    DIFFUSION_MODEL: "tiny class-conditional DDPM on digits; devices personalise it by ZO (ZOODiP)",
}


def method_summary(name: str) -> str:
    """The one-line description of ``name`` ("" if it has none)."""
    return METHOD_SUMMARIES.get(name, "")


class UnknownMethodError(ValueError):
    """The caller named a method the catalogue does not have."""


def method_names() -> list[str]:
    return sorted(METHOD_PATHS)


def get_trainer(name: str) -> MethodTrainer:
    """The trainer registered as ``name``; a clear error lists the valid names."""
    if name not in METHOD_PATHS:
        raise UnknownMethodError(f"unknown method {name!r}; choose one of {method_names()}")
    module_name, attribute = METHOD_PATHS[name].split(":")
    return getattr(importlib.import_module(module_name), attribute)


def validate_config(name: str, config: dict[str, Any] | None) -> Any:
    """Parse ``config`` with the method's pydantic model; ValueError with every problem."""
    trainer = get_trainer(name)
    try:
        return trainer.config_model.model_validate(config or {})
    except ValidationError as exc:
        problems = validation_message(exc, root="config")
        raise ValueError(f"invalid config for method {name!r}: {problems}") from exc
