"""A parsed context's memory is known before SEAL allocates it, and capped by its upload size."""

from __future__ import annotations

import struct

import pytest
import zstandard

from server.ckks_matmul import (
    MIN_PARSED_ALLOWANCE_BYTES,
    EvaluationKeys,
    context_table_bytes,
    parsed_bytes_limit,
)
from server.ckks_wire import TenSEALContextProto, seal_loaded_size
from shared.he import public_context_bytes

ZSTD = 2


def _seal_blob(raw: bytes) -> bytes:
    """``raw`` framed as SEAL frames an object: a 16-byte header, then zstd."""
    compressed = zstandard.ZstdCompressor(level=3).compress(raw)
    size = 16 + len(compressed)
    return struct.pack("<HBBBBHQ", 0xA15E, 16, 4, 1, ZSTD, 0, size) + compressed


def test_sizing_stops_at_the_limit_without_expanding_a_bomb():
    bomb = _seal_blob(bytes(256 * 1024 * 1024))  # 256 MiB of zeros in a few kB
    assert len(bomb) < 64 * 1024
    assert seal_loaded_size(bomb, 1024 * 1024) > 1024 * 1024
    small = _seal_blob(b"x" * 1000)
    assert seal_loaded_size(small, 1 << 20) == 1000
    with pytest.raises(ValueError, match="not a SEAL object"):
        seal_loaded_size(b"\x00" * 40, 1 << 20)


def test_a_context_whose_keys_would_expand_past_the_limit_is_refused(small_context):
    message = TenSEALContextProto.FromString(public_context_bytes(small_context))
    message.public_context.galois_keys = _seal_blob(bytes(512 * 1024 * 1024))
    crafted = message.SerializeToString()
    assert parsed_bytes_limit(len(crafted)) == MIN_PARSED_ALLOWANCE_BYTES
    with pytest.raises(ValueError, match="would take more than .* bytes in memory once parsed"):
        EvaluationKeys.from_public_context(crafted)


def test_the_estimate_covers_the_decompressed_keys_and_honest_contexts_fit(default_context):
    data = public_context_bytes(default_context)
    keys = EvaluationKeys.from_public_context(data)
    message = TenSEALContextProto.FromString(data)
    loaded = seal_loaded_size(message.public_context.galois_keys, 1 << 40)
    n, bits = keys.parameters
    # SEAL stores keys as they sit in memory: the estimate must not be below that
    assert keys.nbytes - context_table_bytes(n, len(bits)) >= loaded
    assert keys.nbytes <= parsed_bytes_limit(len(data))
