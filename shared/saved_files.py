"""How SecDOOD files are saved and read back: ``torch.save`` of a dict with a format and version.

Every kind of saved file (float model bundle, int8 model, HyperNetwork, diffusion files, the
job runner's wrapper around a method's state) names its ``format`` and ``format_version``; it
is read with ``weights_only=True`` (a file never runs code) and checked here, so a damaged or
foreign file is always a ``ValueError`` with the same kind of message.
"""

from __future__ import annotations

import io
from collections.abc import Collection
from typing import Any

import torch

#: the job runner's wrapper around the state of a method without its own file format
METHOD_FORMAT = "secdood-method"
METHOD_FORMAT_VERSION = 1


def save_payload(payload: dict[str, Any]) -> bytes:
    """The bytes of ``payload`` (tensors and plain values only, so it loads ``weights_only``)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def read_payload(data: bytes, what: str) -> Any:
    """Whatever ``data`` holds, loaded ``weights_only``; ValueError when torch cannot read it."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt input
        raise ValueError(f"not a readable {what}: {exc}") from exc


def check_format(payload: Any, fmt: str, versions: Collection[int], what: str) -> dict[str, Any]:
    """``payload`` if it is a dict of format ``fmt`` at one of ``versions``; else ValueError."""
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"not a {what} (expected format {fmt!r})")
    if payload.get("format_version") not in versions:
        readable = ", ".join(map(str, sorted(versions)))
        raise ValueError(
            f"{what} format version {payload.get('format_version')} is not supported "
            f"(this build reads version {readable})"
        )
    return payload


def load_saved(data: bytes, fmt: str, versions: Collection[int], what: str) -> dict[str, Any]:
    """:func:`read_payload` then :func:`check_format`: the one way a saved file is opened."""
    return check_format(read_payload(data, what), fmt, versions, what)
