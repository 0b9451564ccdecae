"""Bytes that are not the expected protobuf message become INVALID_ARGUMENT, not INTERNAL.

grpcio answers a request it cannot deserialise with ``INTERNAL`` and logs a
traceback, as if the server had a bug. :class:`MalformedMessageInterceptor`
swaps each gateway handler's deserialiser for one that never raises: an
unparsable message becomes :data:`MALFORMED`, and the call is refused with
``INVALID_ARGUMENT`` naming the message type before any servicer code runs
(for streams, at the first bad message).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from server.gateway.errors import GatewayError
from server.gateway.interception import Behavior, GatewayInterceptor, wrap_handler


class _Malformed:
    """Stands in for a message that did not parse."""

    def __repr__(self) -> str:
        return "MALFORMED"


MALFORMED = _Malformed()


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # DecodeError and friends: the client sent bad bytes
            return MALFORMED

    return parse


def _refusal(method: str) -> GatewayError:
    name = method.rsplit("/", 1)[-1]
    return GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the {name} request is not a valid protobuf message of the type the RPC takes "
        "(see proto/secdood/v1/gateway.proto)",
    )


def _checked(messages: Iterator[Any], method: str) -> Iterator[Any]:
    for message in messages:
        if message is MALFORMED:
            raise _refusal(method)
        yield message


class MalformedMessageInterceptor(GatewayInterceptor):
    """Refuses unparsable gateway requests with INVALID_ARGUMENT (install it innermost)."""

    def intercept_call(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        def wrap(behavior: Behavior) -> Behavior:
            def checked(request: Any, context: grpc.ServicerContext) -> Any:
                if handler.request_streaming:
                    return behavior(_checked(request, method), context)
                if request is MALFORMED:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(method).message)
                return behavior(request, context)

            return checked

        return wrap_handler(
            handler, wrap, request_deserializer=_tolerant(handler.request_deserializer)
        )
