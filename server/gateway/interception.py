"""What every gateway interceptor shares: the service's names, handler wrapping, the skeleton.

Each interceptor (:mod:`~server.gateway.auth`, :mod:`~server.gateway.limits`,
:mod:`~server.gateway.malformed`) subclasses :class:`GatewayInterceptor` and says only which
calls it governs and how it wraps one; finding the handler and passing the others through
unchanged happens here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

GATEWAY_SERVICE = "secdood.v1.DeviceGateway"
GATEWAY_PREFIX = f"/{GATEWAY_SERVICE}/"

Behavior = Callable[[Any, grpc.ServicerContext], Any]


class GatewayInterceptor(grpc.ServerInterceptor):
    """Wraps the handler of every call it :meth:`governs`; passes all others through as they are."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.governs(method):
            return handler
        return self.intercept_call(handler, method)

    def governs(self, method: str) -> bool:
        """Whether this interceptor wraps ``method``; by default the DeviceGateway's RPCs."""
        return method.startswith(GATEWAY_PREFIX)

    def intercept_call(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """The handler that runs instead of ``handler`` for a governed ``method``."""
        raise NotImplementedError


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Behavior], Behavior],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of the same kind whose behaviour is ``wrap(original behaviour)``.

    ``request_deserializer`` replaces the handler's own when given.
    """
    if handler.request_streaming and handler.response_streaming:
        make, behavior = grpc.stream_stream_rpc_method_handler, handler.stream_stream
    elif handler.request_streaming:
        make, behavior = grpc.stream_unary_rpc_method_handler, handler.stream_unary
    elif handler.response_streaming:
        make, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
    else:
        make, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
    return make(
        wrap(behavior),
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
