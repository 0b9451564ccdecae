"""Device authentication as one gRPC server interceptor (Flower style).

No servicer method checks credentials itself. :class:`DeviceAuthInterceptor`
wraps every handler of the server:

- ``Enroll`` needs metadata ``x-secdood-enrollment-key: <fleet key>``;
- every other ``DeviceGateway`` call (and any RPC added to it later) needs
  ``authorization: Bearer <device token>``, a token the registry knows that was
  issued less than ``token_ttl_seconds`` ago;
- the standard health and reflection services stay open, so load balancers and
  ``grpcurl`` work without a token.

The check runs inside the wrapped handler, i.e. on the worker thread that runs
the RPC (not on the server's polling thread, which must never wait for the
database). The authenticated device is put into a :class:`contextvars.ContextVar`
for exactly the duration of that handler; the servicer reads it with
:func:`current_device`.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from server.gateway.errors import abort_with
from server.gateway.interception import (
    GATEWAY_SERVICE,
    Behavior,
    GatewayInterceptor,
    wrap_handler,
)
from server.registry import DeviceRecord, Registry

log = logging.getLogger("secdood.gateway")

ENROLL_METHOD = f"/{GATEWAY_SERVICE}/Enroll"
#: services anyone may call: health checks and reflection carry no device data
OPEN_SERVICES = (
    "grpc.health.v1.Health/",
    "grpc.reflection.v1.ServerReflection/",
    "grpc.reflection.v1alpha.ServerReflection/",
)

TOKEN_METADATA = "authorization"
ENROLLMENT_KEY_METADATA = "x-secdood-enrollment-key"
MISSING_TOKEN = "missing device token (send metadata 'authorization: Bearer <token>')"
INVALID_TOKEN = "invalid or expired device token; enrol the device again"
MISSING_ENROLLMENT_KEY = f"missing enrollment key (send metadata '{ENROLLMENT_KEY_METADATA}')"
INVALID_ENROLLMENT_KEY = "invalid enrollment key"

_current_device: contextvars.ContextVar[DeviceRecord | None] = contextvars.ContextVar(
    "secdood_current_device", default=None
)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def current_device() -> DeviceRecord:
    """The device that made the RPC being handled; only valid inside an authenticated handler."""
    device = _current_device.get()
    if device is None:
        raise RuntimeError("no authenticated device: called outside a token-protected RPC")
    return device


def current_device_id() -> str | None:
    """The calling device's id, or None outside a token-protected RPC (e.g. in Enroll)."""
    device = _current_device.get()
    return None if device is None else device.id


def _metadata_value(context: grpc.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key and isinstance(item.value, str):
            return item.value
    return None


def _iterate_in(context: contextvars.Context, iterator: Iterator[Any]) -> Iterator[Any]:
    """Advance ``iterator`` inside ``context``, so a streaming handler sees its device too."""
    while True:
        try:
            item = context.run(next, iterator)
        except StopIteration:
            return
        yield item


class DeviceAuthInterceptor(GatewayInterceptor):
    """Admits ``Enroll`` by the fleet enrolment key and everything else by device token."""

    def __init__(
        self,
        registry: Registry,
        enrollment_key: str,
        token_ttl_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(enrollment_key, str) or not enrollment_key:
            raise ValueError("enrollment_key must be a non-empty string")
        if isinstance(token_ttl_seconds, bool) or not isinstance(token_ttl_seconds, int):
            raise TypeError(f"token_ttl_seconds must be an int, got {token_ttl_seconds!r}")
        if token_ttl_seconds <= 0:
            raise ValueError(f"token_ttl_seconds must be positive, got {token_ttl_seconds}")
        self._registry = registry
        # Only the digest is kept (docs/operations.md): the key itself is not held in memory.
        self._enrollment_key_digest = _digest(enrollment_key)
        self._token_ttl_seconds = token_ttl_seconds
        self._clock = clock

    def token_expires_at(self, device: DeviceRecord) -> int:
        """Unix seconds after which the device's token is refused (TTL counts from enrolment)."""
        return int(device.created_at.timestamp()) + self._token_ttl_seconds

    def governs(self, method: str) -> bool:
        """Every call but the open services (health, reflection) needs a key or a token."""
        return not method.lstrip("/").startswith(OPEN_SERVICES)

    def intercept_call(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        admit = self._check_enrollment_key if method == ENROLL_METHOD else self._check_token
        return _guarded(handler, admit, method)

    def _check_enrollment_key(self, context: grpc.ServicerContext) -> DeviceRecord | None:
        presented = _metadata_value(context, ENROLLMENT_KEY_METADATA)
        if not presented:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, MISSING_ENROLLMENT_KEY)
        if not hmac.compare_digest(_digest(presented), self._enrollment_key_digest):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, INVALID_ENROLLMENT_KEY)
        return None

    def _check_token(self, context: grpc.ServicerContext) -> DeviceRecord | None:
        header = _metadata_value(context, TOKEN_METADATA)
        scheme, _, token = (header or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN)
        try:
            device = self._registry.authenticate_device(token)
        except Exception as error:  # e.g. a busy database: a status, never UNKNOWN
            failure = error
        else:
            failure = None
        if failure is not None:
            abort_with(context, failure)
        if device is None or self._clock() >= self.token_expires_at(device):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, INVALID_TOKEN)
        return device


def _guarded(
    handler: grpc.RpcMethodHandler,
    admit: Callable[[grpc.ServicerContext], DeviceRecord | None],
    method: str,
) -> grpc.RpcMethodHandler:
    """The same handler, but ``admit`` runs first and its device is visible to the servicer."""

    def wrap(behavior: Behavior) -> Behavior:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                device = admit(context)  # aborts the RPC when the caller is not admitted
            except Exception:
                log.info("%s refused status=UNAUTHENTICATED", method.rsplit("/", 1)[-1])
                raise
            run_context = contextvars.copy_context()
            run_context.run(_current_device.set, device)
            result = run_context.run(behavior, request, context)
            if handler.response_streaming:
                return _iterate_in(run_context, result)
            return result

        return guarded

    return wrap_handler(handler, wrap)
