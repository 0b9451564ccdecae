"""Assembling the gRPC server: gateway servicer, auth interceptor, health, reflection, TLS.

Typical use (the serve command)::

    server, port, health = build_grpc_server(registry, settings, readiness=lambda: False)
    server.start()
    ...                                   # load the base model
    set_serving(health, True)             # health checks now answer SERVING
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.gateway.auth import GATEWAY_SERVICE, DeviceAuthInterceptor
from server.gateway.limits import CallLimits, LimitsInterceptor, StreamWatchdog, pool_size
from server.gateway.malformed import MalformedMessageInterceptor
from server.gateway.servicer import DeviceGatewayServicer
from server.personalization import PersonalizationService
from server.registry import Registry
from server.registry.artifacts import CHUNK_BYTES
from server.settings import Settings
from shared.rpc import gateway_pb2, gateway_pb2_grpc

#: one 1 MiB chunk plus room for the protobuf framing and the sha256 on a first chunk
MAX_MESSAGE_BYTES = CHUNK_BYTES + 64 * 1024
#: concurrent enrolments (each a short database write) ...
MAX_ENROLMENTS = 4
#: ... and enrolments that may wait for one of those slots, each at most this long (s)
MAX_WAITING_ENROLMENTS = 16
ENROLMENT_WAIT_S = 5.0


def set_serving(health_servicer: health.HealthServicer, serving: bool) -> None:
    """Flip the overall and the gateway's health status (SERVING once the model is loaded)."""
    response = health_pb2.HealthCheckResponse
    status = response.SERVING if serving else response.NOT_SERVING
    for service in ("", GATEWAY_SERVICE):
        health_servicer.set(service, status)


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    pem = {}
    for what, path in (("certificate", settings.tls_cert), ("private key", settings.tls_key)):
        if not path.is_file():
            raise FileNotFoundError(f"TLS {what} file not found: {path}")
        pem[what] = path.read_bytes()
    return grpc.ssl_server_credentials([(pem["private key"], pem["certificate"])])


def build_grpc_server(
    registry: Registry,
    settings: Settings,
    readiness: Callable[[], bool] = lambda: False,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Build (but do not start) the device gateway bound to ``settings.host:grpc_port``.

    Returns the server, the port actually bound (useful with ``grpc_port=0``)
    and the health servicer. Health starts as SERVING if ``readiness()`` is
    already true, else NOT_SERVING; flip it later with :func:`set_serving`.
    TLS is used when ``settings.tls_cert``/``tls_key`` are set.
    ``settings.enrollment_key`` must be set (the serve command generates one).

    The thread pool is sized by :func:`~server.gateway.limits.pool_size` from the
    call caps in ``settings``, so health checks and enrolment always find a
    thread (docs/operations.md, "Limits"). Each admitted upload holds at most
    ``max_upload_bytes`` in memory.
    """
    if settings.enrollment_key is None or not settings.enrollment_key.get_secret_value():
        raise ValueError(
            "settings.enrollment_key is not set; set SECDOOD_ENROLLMENT_KEY (the serve "
            "command generates one into data_dir/keys.json)"
        )
    credentials = _server_credentials(settings)
    interceptor = DeviceAuthInterceptor(
        registry, settings.enrollment_key.get_secret_value(), settings.token_ttl_seconds
    )
    limits = CallLimits(
        max_data=settings.grpc_max_data_streams,
        per_device=settings.grpc_max_streams_per_device,
        max_telemetry=settings.grpc_max_telemetry_calls,
        max_enroll=MAX_ENROLMENTS,
        max_he=settings.grpc_max_he_calls,
        enroll_waiting=MAX_WAITING_ENROLMENTS,
        enroll_wait_s=ENROLMENT_WAIT_S,
    )
    watchdog = StreamWatchdog(
        message_timeout_s=settings.grpc_message_timeout_s,
        stream_timeout_s=settings.grpc_stream_timeout_s,
        min_bytes_per_s=settings.grpc_min_upload_bytes_per_s,
    )
    workers = pool_size(
        limits.max_data, limits.max_telemetry, limits.max_enroll, limits.enroll_waiting
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc-gateway"),
        # auth first (outermost): only admitted callers are counted against the caps;
        # the malformed-message check is innermost, next to the deserialiser it replaces
        interceptors=[
            interceptor,
            LimitsInterceptor(limits, watchdog),
            MalformedMessageInterceptor(),
        ],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Without this a second server could silently share a port that is in use.
            ("grpc.so_reuseport", 0),
        ],
    )
    servicer = DeviceGatewayServicer(
        registry,
        settings.token_ttl_seconds,
        settings.max_upload_bytes,
        PersonalizationService(registry, settings.context_cache_bytes, workers=settings.he_workers),
    )
    gateway_pb2_grpc.add_DeviceGatewayServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    set_serving(health_servicer, bool(readiness()))
    reflection.enable_server_reflection(
        (
            gateway_pb2.DESCRIPTOR.services_by_name["DeviceGateway"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{settings.host}:{settings.grpc_port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as error:
        raise OSError(f"cannot bind the gRPC gateway to {address}: {error}") from None
    if port == 0:
        raise OSError(f"cannot bind the gRPC gateway to {address} (port in use?)")
    return server, port, health_servicer
