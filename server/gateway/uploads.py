"""Reassembling a chunked upload (``stream ContextChunk``) with every check a device needs.

Framing: the first chunk carries ``sha256`` (hex of the whole payload) and
``total_bytes``; every chunk carries data. The payload is refused

- with ``RESOURCE_EXHAUSTED`` as soon as the declared or received size passes
  the server's cap (before the rest is read);
- with ``INVALID_ARGUMENT`` for a malformed stream (no chunks, no sha256 on the
  first chunk, framing fields on a later chunk, more bytes than declared);
- with ``DATA_LOSS`` when the stream ends early or the bytes hash differently.

Nothing here touches the registry, so a refused upload cannot leave a trace.
The payload is held in memory (bounded by the cap) because it must be parsed as
a whole before it may be stored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Protocol

import grpc

from server.gateway.errors import GatewayError

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class UploadChunk(Protocol):
    """What :func:`receive_upload` reads from each message (``gateway_pb2.ContextChunk``)."""

    sha256: str
    total_bytes: int
    data: bytes


def receive_upload(chunks: Iterable[UploadChunk], max_bytes: int) -> tuple[bytes, str]:
    """Join a chunk stream into ``(payload, sha256)`` after checking size and digest."""
    iterator = iter(chunks)
    first = next(iterator, None)
    if first is None:
        raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "empty upload: no chunks received")
    expected_sha256 = first.sha256.strip().lower()
    total_bytes = first.total_bytes
    if not _SHA256_HEX.fullmatch(expected_sha256):
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the first chunk must carry the payload's sha256 as 64 hex characters, "
            f"got {first.sha256[:80]!r}",
        )
    if total_bytes <= 0:
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the first chunk must carry total_bytes > 0 (the size of the whole payload)",
        )
    if total_bytes > max_bytes:
        raise GatewayError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"upload of {total_bytes} bytes exceeds the server limit of {max_bytes} bytes",
        )

    assembled = _Assembly(total_bytes, max_bytes)
    assembled.add(first, 0)
    for index, chunk in enumerate(iterator, start=1):
        if chunk.sha256 or chunk.total_bytes:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"chunk {index} carries sha256/total_bytes; only the first chunk may",
            )
        assembled.add(chunk, index)

    if assembled.received < total_bytes:
        raise GatewayError(
            grpc.StatusCode.DATA_LOSS,
            f"upload truncated: received {assembled.received} of {total_bytes} bytes; "
            "nothing was stored",
        )
    actual_sha256 = assembled.digest.hexdigest()
    if actual_sha256 != expected_sha256:
        raise GatewayError(
            grpc.StatusCode.DATA_LOSS,
            f"sha256 mismatch: declared {expected_sha256}, received bytes hash to "
            f"{actual_sha256}; the upload is corrupt and nothing was stored",
        )
    return b"".join(assembled.parts), actual_sha256


class _Assembly:
    """The bytes received so far, their running sha256, and the two limits they must keep."""

    def __init__(self, total_bytes: int, max_bytes: int) -> None:
        self.total_bytes = total_bytes
        self.max_bytes = max_bytes
        self.digest = hashlib.sha256()
        self.parts: list[bytes] = []
        self.received = 0

    def add(self, chunk: UploadChunk, index: int) -> None:
        self.received += len(chunk.data)
        if self.received > self.max_bytes:
            raise GatewayError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"upload exceeds the server limit of {self.max_bytes} bytes (at chunk {index})",
            )
        if self.received > self.total_bytes:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"upload is longer than the declared total_bytes={self.total_bytes} "
                f"(at chunk {index})",
            )
        self.digest.update(chunk.data)
        self.parts.append(chunk.data)
