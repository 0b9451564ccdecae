"""Reassembling a chunked upload (``stream ContextChunk``) with every check a device needs.

Framing: the first chunk carries ``sha256`` (hex of the whole payload) and
``total_bytes``; every chunk carries data. The payload is refused

- with ``RESOURCE_EXHAUSTED`` as soon as the declared or received size passes
  the server's cap, or the stream passes :attr:`UploadLimits.max_chunks`
  chunks (before the rest is read);
- with ``INVALID_ARGUMENT`` for a malformed stream (no chunks, no sha256 on the
  first chunk, framing fields on a later chunk, more bytes than declared, more
  than :attr:`UploadLimits.max_empty_chunks` chunks without data);
- with ``DATA_LOSS`` when the stream ends early or the bytes hash differently.

Nothing here touches the registry, so a refused upload cannot leave a trace.
The payload is held in memory (bounded by the cap) because it must be parsed as
a whole before it may be stored; it grows in one buffer as chunks arrive (never
ahead of the bytes received), so it is held once, not as chunks plus a joined copy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import grpc

from server.gateway.errors import GatewayError

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: chunks of an upload average at least this many bytes (devices send 1 MiB chunks)
MIN_MEAN_CHUNK_BYTES = 16 * 1024
#: at least this many chunks are always allowed, however small the cap
MIN_CHUNK_LIMIT = 64
#: chunks without data an upload may contain (keep-alives); one more ends it
MAX_EMPTY_CHUNKS = 4


@dataclass(frozen=True)
class UploadLimits:
    """The bounds an upload stream must keep."""

    max_bytes: int
    max_chunks: int
    max_empty_chunks: int = MAX_EMPTY_CHUNKS

    @classmethod
    def for_size(cls, max_bytes: int) -> UploadLimits:
        """Limits for uploads of at most ``max_bytes``: chunk count scaled with the size."""
        return cls(max_bytes, max(MIN_CHUNK_LIMIT, max_bytes // MIN_MEAN_CHUNK_BYTES))


class UploadChunk(Protocol):
    """What :func:`receive_upload` reads from each message (``gateway_pb2.ContextChunk``)."""

    sha256: str
    total_bytes: int
    data: bytes


def receive_upload(chunks: Iterable[UploadChunk], limits: UploadLimits | int) -> tuple[bytes, str]:
    """Join a chunk stream into ``(payload, sha256)`` after checking size and digest.

    ``limits`` may be a plain byte cap (the chunk limits then follow from it).
    """
    if isinstance(limits, int):
        limits = UploadLimits.for_size(limits)
    max_bytes = limits.max_bytes
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

    assembled = _Assembly(total_bytes, limits)
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
    return assembled.payload, actual_sha256


class _Assembly:
    """The bytes received so far, their running sha256, and the two limits they must keep."""

    def __init__(self, total_bytes: int, limits: UploadLimits) -> None:
        self.total_bytes = total_bytes
        self.max_bytes = limits.max_bytes
        self.limits = limits
        self.digest = hashlib.sha256()
        self.payload = bytearray()
        self.received = 0
        self.empty = 0

    def add(self, chunk: UploadChunk, index: int) -> None:
        if index >= self.limits.max_chunks:
            raise GatewayError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"upload has more than {self.limits.max_chunks} chunks, the limit; send "
                "larger chunks (up to 1 MiB)",
            )
        if not chunk.data:
            self.empty += 1
            if self.empty > self.limits.max_empty_chunks:
                raise GatewayError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"upload has more than {self.limits.max_empty_chunks} empty chunks, the "
                    "limit; every chunk must carry data",
                )
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
        self.payload += chunk.data
