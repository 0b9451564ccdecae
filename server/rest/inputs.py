"""Turn client-sent numbers into what the pipeline takes, with errors that say what was wrong.

Two model inputs exist: fused embeddings ``features`` float32 [N, D], and
``clip`` float32 [N, T, 3, H, W] RGB in [0, 1] (the layout of
:func:`shared.data.tensors.frames_to_tensor`). Clips are converted back to the
pipeline's uint8 frames [N, T, H, W, 3] (``round(x * 255)``), which is exact for
clips that came from 8-bit video, so optical flow is computed exactly as on the
device.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from shared.pipeline import OODPipeline
from shared.validation import validation_message

#: deepest nesting of arrays/objects a JSON body may have (a clip in a V2 body needs 8)
MAX_JSON_DEPTH = 32
#: most dimensions a declared tensor shape may have
MAX_TENSOR_DIMS = 8
#: most elements a declared tensor may have (64 MiB of FP32, the default body cap)
MAX_TENSOR_ELEMENTS = 16 * 1024 * 1024
#: longest name (model, tensor, detector, method) a request may carry
MAX_NAME_CHARS = 200

_Model = TypeVar("_Model", bound=BaseModel)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


class InputError(ValueError):
    """A request input with the wrong type, shape or values (a client error, HTTP 4xx)."""


def json_depth(body: bytes) -> int:
    """Deepest ``[``/``{`` nesting of a JSON text (strings skipped); linear, no parsing."""
    structure = _STRING.sub(b'""', body)
    opens = np.frombuffer(structure, dtype=np.uint8)
    steps = np.isin(opens, (ord("["), ord("{"))).astype(np.int32)
    steps -= np.isin(opens, (ord("]"), ord("}"))).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def parse_json_body(body: bytes, model: type[_Model], what: str) -> _Model:
    """A JSON request body validated as ``model``; depth is checked before parsing."""
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise InputError(
            f"request body nests {depth} levels deep; the limit is {MAX_JSON_DEPTH} levels"
        )
    try:  # pydantic parses the JSON and validates in one pass (no dict of Python objects first)
        return model.model_validate_json(body)
    except ValidationError as exc:
        if any(item["type"] == "json_invalid" for item in exc.errors()):
            raise InputError(f"request body is not valid JSON: {validation_message(exc)}") from None
        raise InputError(f"invalid {what}: {validation_message(exc)}") from None


def to_float_array(data: Any, what: str) -> np.ndarray:
    """Nested JSON lists of numbers → float32 array (any rank); rejects ragged or text.

    Values are checked (finite, in range) once, with the shape, by
    :func:`check_features` / :func:`clips_to_frames`.
    """
    if not isinstance(data, list):
        raise InputError(f"{what} must be a (nested) list of numbers, got {type(data).__name__}")
    try:
        array = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise InputError(f"{what} must be a rectangular (nested) list of numbers: {exc}") from None
    if array.dtype.kind not in "iuf":
        raise InputError(f"{what} must contain only numbers, got {_describe(array)}")
    with np.errstate(over="ignore"):
        return array.astype(np.float32)


def _check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise InputError(f"{what} contains NaN or infinite values (or values beyond float32)")


def _describe(array: np.ndarray) -> str:
    kinds = {"b": "booleans", "U": "text", "S": "text", "O": "mixed or null values"}
    return kinds.get(array.dtype.kind, f"dtype {array.dtype}")


def check_features(array: np.ndarray, pipeline: OODPipeline, what: str = "features") -> np.ndarray:
    """float32 [N, D] with the model's D, N >= 1 and finite values."""
    dim = pipeline.embed_dim
    if array.ndim != 2 or array.shape[1] != dim:
        raise InputError(f"{what} must have shape [N, {dim}], got {list(array.shape)}")
    if array.shape[0] == 0:
        raise InputError(f"{what} must contain at least one row, got shape {list(array.shape)}")
    _check_finite(array, what)
    return array


def clips_to_frames(array: np.ndarray, pipeline: OODPipeline, what: str = "clip") -> np.ndarray:
    """float32 [N, T, 3, H, W] in [0, 1] → uint8 frames [N, T, H, W, 3] for the pipeline."""
    config = pipeline.bundle.config
    expected = [config.n_frames, 3, config.size, config.size]
    if array.ndim != 5 or list(array.shape[1:]) != expected:
        raise InputError(
            f"{what} must have shape [N, {', '.join(map(str, expected))}] "
            f"(N clips of T frames, RGB channels first, values in [0, 1]), "
            f"got {list(array.shape)}"
        )
    if array.shape[0] == 0:
        raise InputError(f"{what} must contain at least one clip, got shape {list(array.shape)}")
    _check_finite(array, what)
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise InputError(
            f"{what} values must lie in [0, 1] (RGB / 255), got range [{low:g}, {high:g}]"
        )
    frames = np.rint(array * 255.0).astype(np.uint8)
    return np.ascontiguousarray(frames.transpose(0, 1, 3, 4, 2))


def check_detectors(main: Any, extra: Any, available: list[str]) -> tuple[str, tuple[str, ...]]:
    """Validate the verdict detector and the detectors to report; returns (main, extra)."""
    if not isinstance(main, str) or main not in available:
        raise InputError(f"unknown detector {main!r}; choose one of {available}")
    if extra is None:
        return main, tuple(available)
    if not isinstance(extra, list) or not all(isinstance(name, str) for name in extra):
        raise InputError(f"detectors must be a list of detector names, got {extra!r}")
    for name in extra:
        if name not in available:
            raise InputError(f"unknown detector {name!r}; choose one of {available}")
    return main, tuple(dict.fromkeys(extra))
