"""How gateway failures become gRPC statuses.

Servicer code raises :class:`GatewayError` (or lets a registry error through);
:func:`status_for` turns any exception into a ``(code, message)`` pair, so every
failure reaches the device as a gRPC status with a clear message and an
unexpected bug becomes ``INTERNAL`` (logged with its traceback) instead of an
opaque ``UNKNOWN``.
"""

from __future__ import annotations

import logging

import grpc

from server.registry.errors import ArtifactIntegrityError, NotFoundError

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    """A refusal with a definite gRPC status code and a message meant for the device."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message a device should see for ``error``."""
    if isinstance(error, GatewayError):
        return error.code, error.message
    if isinstance(error, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(error)
    if isinstance(error, ArtifactIntegrityError):
        return grpc.StatusCode.DATA_LOSS, str(error)
    if isinstance(error, ValueError | TypeError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, grpc.RpcError):
        # Raised by a request iterator when the client cancels or the connection drops.
        return grpc.StatusCode.CANCELLED, "the call was cancelled by the client"
    logger.error("unexpected error in the device gateway", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal server error (details are in the server log)"
