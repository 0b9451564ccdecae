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
from sqlalchemy.exc import OperationalError

from server.personalization import MissingContextError
from server.registry.errors import ArtifactIntegrityError, NotFoundError
from shared.wire import RETRY_AFTER_METADATA

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    """A refusal with a definite gRPC status code and a message meant for the device."""

    def __init__(
        self, code: grpc.StatusCode, message: str, retry_after_ms: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: sent as trailing metadata RETRY_AFTER_METADATA (overload refusals)
        self.retry_after_ms = retry_after_ms


#: what a caller is told to wait when the registry database is momentarily busy
BUSY_RETRY_AFTER_MS = 500


def abort_with(context: grpc.ServicerContext, error: BaseException) -> None:
    """End the RPC with ``error``'s status (and retry hint); raises, as ``abort`` does."""
    code, message = status_for(error)
    retry_after_ms = getattr(error, "retry_after_ms", None)
    if isinstance(error, OperationalError):
        retry_after_ms = BUSY_RETRY_AFTER_MS
    if retry_after_ms is not None:
        context.set_trailing_metadata(((RETRY_AFTER_METADATA, str(retry_after_ms)),))
    context.abort(code, message)


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message a device should see for ``error``."""
    if isinstance(error, GatewayError):
        return error.code, error.message
    if isinstance(error, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(error)
    if isinstance(error, MissingContextError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(error)
    if isinstance(error, ArtifactIntegrityError):
        return grpc.StatusCode.DATA_LOSS, str(error)
    if isinstance(error, ValueError | TypeError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, OperationalError):
        # e.g. SQLite's "database is locked" under a burst of writes: transient overload
        logger.warning("registry busy: %s", str(error).splitlines()[0])
        return grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"the registry is busy; retry after {BUSY_RETRY_AFTER_MS} ms"
        )
    if isinstance(error, grpc.RpcError):
        # Raised by a request iterator when the client cancels or the connection drops.
        return grpc.StatusCode.CANCELLED, "the call was cancelled by the client"
    logger.error("unexpected error in the device gateway", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal server error (details are in the server log)"
