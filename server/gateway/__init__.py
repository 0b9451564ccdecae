"""The gRPC device gateway: enrolment, HE-context upload, model download, telemetry.

Layers (proto → servicer → registry): :mod:`server.gateway.auth` admits
callers, :mod:`server.gateway.servicer` maps RPCs onto the registry, and
:mod:`server.gateway.server` assembles the server with health, reflection and
TLS. The wire contract is ``proto/secdood/v1/gateway.proto`` (docs/protocol.md).
"""

from server.gateway.auth import DeviceAuthInterceptor, current_device
from server.gateway.server import MAX_MESSAGE_BYTES, build_grpc_server, set_serving
from server.gateway.servicer import DeviceGatewayServicer

__all__ = [
    "MAX_MESSAGE_BYTES",
    "DeviceAuthInterceptor",
    "DeviceGatewayServicer",
    "build_grpc_server",
    "current_device",
    "set_serving",
]
