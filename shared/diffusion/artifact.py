"""Files of the diffusion method: the float denoiser, its int8 export, a learned token.

All three are ``torch.save`` dicts of plain tensors and numbers, read with ``weights_only=True``
and checked by a format tag, so a wrong or damaged file is a clear ``ValueError``.

* float denoiser: the hub's generic method artifact (``server/jobs.py``) whose ``state`` is
  ``{"config", "weights", "held_out_class"}``; :func:`denoiser_from_state` rebuilds it.
* int8 denoiser (registry variant ``int8``, what a device downloads): ``FORMAT_INT8``.
* learned token (``FORMAT_TOKEN``): the vector, the sha256 of the denoiser it was learned on
  (a token only means something to that denoiser), how it was learned and its loss history.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from shared.diffusion.denoiser import Denoiser, DenoiserConfig
from shared.diffusion.int8 import build_int8_denoiser, quantize_denoiser_state
from shared.model_names import DIFFUSION_MODEL
from shared.saved_files import METHOD_FORMAT, METHOD_FORMAT_VERSION, load_saved, save_payload

FORMAT_INT8 = "secdood-diffusion-int8"
FORMAT_TOKEN = "secdood-diffusion-token"
FORMAT_VERSION = 1


def denoiser_state(model: Denoiser, held_out_class: int) -> dict[str, Any]:
    """What the trainer stores: config, float weights, which class was held out."""
    return {
        "config": model.config.to_dict(),
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "held_out_class": int(held_out_class),
    }


def denoiser_from_state(state: dict[str, Any]) -> Denoiser:
    model = Denoiser(DenoiserConfig.from_dict(state["config"]))
    model.load_state_dict(state["weights"])
    model.requires_grad_(False)
    return model.eval()


def float_denoiser_from_bytes(data: bytes) -> tuple[Denoiser, dict[str, Any]]:
    """(model, state) from the registry's float artifact of the ``diffusion`` method."""
    payload = load_saved(data, METHOD_FORMAT, (METHOD_FORMAT_VERSION,), "SecDOOD method artifact")
    if payload.get("method") != DIFFUSION_MODEL:
        raise ValueError(
            f"artifact is of method {payload.get('method')!r}, not {DIFFUSION_MODEL!r}"
        )
    return denoiser_from_state(payload["state"]), payload["state"]


def int8_denoiser_bytes(model: Denoiser, held_out_class: int, metrics: dict | None = None) -> bytes:
    """The device artifact: int8 weights of ``model`` plus its config."""
    return save_payload(
        {
            "format": FORMAT_INT8,
            "format_version": FORMAT_VERSION,
            "config": model.config.to_dict(),
            "held_out_class": int(held_out_class),
            "metrics": dict(metrics or {}),
            **quantize_denoiser_state(model),
        }
    )


def int8_denoiser_from_bytes(data: bytes) -> tuple[Denoiser, dict[str, Any]]:
    """(int8 model, payload) from a device artifact; ValueError when it is not one."""
    payload = load_saved(data, FORMAT_INT8, (FORMAT_VERSION,), "SecDOOD int8 diffusion artifact")
    model = build_int8_denoiser(DenoiserConfig.from_dict(payload["config"]), payload)
    return model, payload


def token_bytes(token: Tensor, denoiser_sha256: str, info: dict[str, Any]) -> bytes:
    """A learned token file: ``token`` [token_dim] float32 plus provenance ``info`` (JSON-able)."""
    if token.dim() != 1 or not token.is_floating_point() or not torch.isfinite(token).all():
        raise ValueError(f"a token is a finite float vector, got {tuple(token.shape)}")
    return save_payload(
        {
            "format": FORMAT_TOKEN,
            "format_version": FORMAT_VERSION,
            "token": token.detach().float().clone(),
            "denoiser_sha256": denoiser_sha256,
            "info": dict(info),
        }
    )


def token_from_bytes(data: bytes) -> dict[str, Any]:
    """``{"token", "denoiser_sha256", "info"}`` from a token file; ValueError otherwise."""
    return load_saved(data, FORMAT_TOKEN, (FORMAT_VERSION,), "SecDOOD learned-token file")
