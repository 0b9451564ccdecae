"""Open Inference Protocol (KServe V2) tensors: request bodies in, output tensors out.

A request body is JSON, or — the *binary tensor data* extension that Triton
clients use by default — a JSON header of ``Inference-Header-Content-Length``
bytes followed by the raw little-endian tensors of every input whose
``parameters.binary_data_size`` is set, in input order. Outputs are always
returned as JSON data (clients accept that even when they asked for binary).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from server.rest.inputs import MAX_TENSOR_ELEMENTS, InputError, parse_json_body, to_float_array
from server.rest.schemas import InferenceRequest, RequestInput, ResponseOutput

#: header naming the length of the JSON part of a binary-extension request
BINARY_HEADER = "inference-header-content-length"
#: the one input datatype both inputs take
INPUT_DATATYPE = "FP32"


def parse_infer_request(
    body: bytes, header_length: str | None
) -> tuple[InferenceRequest, dict[str, np.ndarray]]:
    """Parse a V2 request body into the request and its input arrays (float32, by name)."""
    json_part, binary_part = _split_body(body, header_length)
    request = parse_json_body(json_part, InferenceRequest, "inference request")

    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name in arrays:
            raise InputError(f"input {tensor.name!r} is given more than once")
        array, used = _decode_input(tensor, binary_part, offset)
        arrays[tensor.name] = array
        offset += used
    if offset != len(binary_part):
        raise InputError(
            f"request has {len(binary_part) - offset} bytes of binary data that no input claims"
        )
    return request, arrays


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise InputError(
            f"{BINARY_HEADER} must be the byte length of the JSON header "
            f"(at most {len(body)}), got {header_length!r}"
        )
    split = int(header_length)
    return body[:split], body[split:]


def _decode_input(tensor: RequestInput, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    """The input as float32 of its declared shape, and how many binary bytes it used."""
    what = f"input {tensor.name!r}"
    if tensor.datatype != INPUT_DATATYPE:
        raise InputError(f"{what} must have datatype {INPUT_DATATYPE}, got {tensor.datatype!r}")
    n_values = math.prod(tensor.shape)
    if n_values > MAX_TENSOR_ELEMENTS:
        raise InputError(
            f"{what} declares shape {tensor.shape} ({n_values} values); the limit is "
            f"{MAX_TENSOR_ELEMENTS} values per tensor"
        )
    binary_size = (tensor.parameters or {}).get("binary_data_size")
    if binary_size is not None:
        if tensor.data is not None:
            raise InputError(f"{what} has both 'data' and parameters.binary_data_size")
        expected = n_values * np.dtype(np.float32).itemsize
        if binary_size != expected or offset + expected > len(binary):
            raise InputError(
                f"{what} of shape {tensor.shape} needs {expected} bytes of FP32 binary data, "
                f"got binary_data_size={binary_size!r} with {len(binary) - offset} bytes left"
            )
        values = np.frombuffer(binary, dtype="<f4", count=n_values, offset=offset)
        return values.astype(np.float32).reshape(tensor.shape), expected
    if tensor.data is None:
        raise InputError(f"{what} has no 'data' (and no parameters.binary_data_size)")
    array = to_float_array(tensor.data, f"{what} data")
    nested_mismatch = array.ndim > 1 and list(array.shape) != tensor.shape
    if array.size != n_values or nested_mismatch:
        raise InputError(
            f"{what} declares shape {tensor.shape} ({n_values} values) but its data has "
            f"shape {list(array.shape)} ({array.size} values); send it flat (row-major) "
            "or nested exactly as the shape says"
        )
    return array.reshape(tensor.shape), 0


def fp32_output(name: str, array: np.ndarray) -> ResponseOutput:
    """A float output tensor, flattened row-major."""
    array = np.asarray(array, dtype=np.float32)
    return ResponseOutput(
        name=name, shape=list(array.shape), datatype="FP32", data=array.ravel().tolist()
    )


def bool_output(name: str, array: np.ndarray) -> ResponseOutput:
    array = np.asarray(array, dtype=bool)
    return ResponseOutput(
        name=name, shape=list(array.shape), datatype="BOOL", data=array.ravel().tolist()
    )


def bytes_output(name: str, values: Sequence[str]) -> ResponseOutput:
    """A BYTES (string) output of shape [len(values)]."""
    return ResponseOutput(name=name, shape=[len(values)], datatype="BYTES", data=list(values))
