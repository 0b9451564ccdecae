"""The ``DeviceGateway`` servicer: protobuf in, registry call, protobuf out.

Deliberately thin. Authentication happened in :mod:`server.gateway.auth` (the
calling device comes from :func:`~server.gateway.auth.current_device`), upload
framing lives in :mod:`server.gateway.uploads`, the HE-context check in
:mod:`server.gateway.he_context`, and state in the registry. Every method runs
under :func:`_as_grpc_status`, so any failure reaches the device as a gRPC
status with a clear message. Each call validates before it writes, so a
refused call leaves the registry unchanged.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import numpy as np

from server.gateway.auth import current_device, current_device_id
from server.gateway.errors import GatewayError, abort_with, status_for
from server.gateway.he_context import check_public_ckks_context
from server.gateway.messages import device_name, profile_dict, telemetry_payload
from server.gateway.uploads import UploadLimits, receive_upload
from server.personalization import (
    DEFAULT_HYPERNET,
    PersonalizationService,
    PersonalizeQuery,
)
from server.registry import Registry
from shared.model_names import BASE_MODEL as DEFAULT_MODEL
from shared.rpc import gateway_pb2, gateway_pb2_grpc
from shared.wire import CHUNK_BYTES

log = logging.getLogger("secdood.gateway")

DEFAULT_VARIANT = "float"

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _outcome(method: str, started: float, error: BaseException | None) -> None:
    """One log line per call: RPC, device id, status, duration — never keys or payloads."""
    code = grpc.StatusCode.OK if error is None else status_for(error)[0]
    log.info(
        "%s device=%s status=%s duration_ms=%.1f",
        method,
        current_device_id() or "-",
        code.name,
        1000 * (time.perf_counter() - started),
    )


def _as_grpc_status(method: _Method) -> _Method:
    """Turn any exception of ``method`` into an aborted call with its status; log the outcome.

    ``abort`` is called outside the ``except`` block on purpose: it raises an
    exception of its own, which must not be caught and translated again.
    """
    name = method.__name__
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            try:
                yield from method(self, request, context)
                _outcome(name, started, None)
                return
            except Exception as error:
                failure = error
            _outcome(name, started, failure)
            abort_with(context, failure)

        return streaming  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            answer = method(self, request, context)
            _outcome(name, started, None)
            return answer
        except Exception as error:
            failure = error
        _outcome(name, started, failure)
        abort_with(context, failure)

    return unary  # type: ignore[return-value]


def _invalid(message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, message)


class DeviceGatewayServicer(gateway_pb2_grpc.DeviceGatewayServicer):
    """Implements ``secdood.v1.DeviceGateway`` on top of a :class:`~server.registry.Registry`."""

    def __init__(
        self,
        registry: Registry,
        token_ttl_seconds: int,
        max_upload_bytes: int,
        personalization: PersonalizationService | None = None,
    ) -> None:
        self._registry = registry
        self._token_ttl_seconds = token_ttl_seconds
        self._max_upload_bytes = max_upload_bytes
        self._upload_limits = UploadLimits.for_size(max_upload_bytes)
        self._personalization = personalization or PersonalizationService(registry)

    @_as_grpc_status
    def Enroll(  # noqa: N802 - gRPC method names are CamelCase
        self, request: gateway_pb2.EnrollRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.EnrollResponse:
        name = device_name(request.name)
        device, token = self._registry.enroll_device(name, profile_dict(request.profile))
        log.info("enrolled device=%s", device.id)
        return gateway_pb2.EnrollResponse(
            device_id=device.id,
            token=token,
            token_expires_at=int(device.created_at.timestamp()) + self._token_ttl_seconds,
        )

    @_as_grpc_status
    def UploadContext(  # noqa: N802
        self, request_iterator: Iterator[gateway_pb2.ContextChunk], context: grpc.ServicerContext
    ) -> gateway_pb2.UploadContextResponse:
        device = current_device()
        data, sha256 = receive_upload(request_iterator, self._upload_limits)
        keys = check_public_ckks_context(data)
        record = self._registry.store_context(
            device.id, data, self._max_upload_bytes, expected_sha256=sha256, is_public=True
        )
        # Parsed once, here: the device's first Personalize finds its context ready.
        self._personalization.keep_context(device.id, record.artifact_sha256, keys, data)
        return gateway_pb2.UploadContextResponse(
            sha256=record.artifact_sha256, size_bytes=record.size_bytes
        )

    @_as_grpc_status
    def GetModel(  # noqa: N802
        self, request: gateway_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> Iterator[gateway_pb2.ModelChunk]:
        if request.version < 0:
            raise _invalid(f"version must be >= 0 (0 = latest), got {request.version}")
        record = self._registry.get_model(
            request.name or DEFAULT_MODEL,
            request.version or None,
            request.variant or DEFAULT_VARIANT,
        )
        # Resolve the blob before sending anything, so a missing file is a clean NOT_FOUND.
        chunks = self._registry.artifacts.iter_chunks(record.artifact_sha256, CHUNK_BYTES)
        yield gateway_pb2.ModelChunk(
            info=gateway_pb2.ModelInfo(
                name=record.name,
                version=record.version,
                variant=record.variant,
                method=record.method,
                sha256=record.artifact_sha256,
                size_bytes=record.size_bytes,
                config_json=json.dumps(record.config),
                metrics_json=json.dumps(record.metrics),
            )
        )
        for data in chunks:
            yield gateway_pb2.ModelChunk(data=data)

    @_as_grpc_status
    def ReportTelemetry(  # noqa: N802
        self, request: gateway_pb2.TelemetryReport, context: grpc.ServicerContext
    ) -> gateway_pb2.TelemetryAck:
        self._registry.add_telemetry(current_device().id, telemetry_payload(request))
        return gateway_pb2.TelemetryAck(accepted=True)

    @_as_grpc_status
    def Personalize(  # noqa: N802
        self, request: gateway_pb2.PersonalizeRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.PersonalizeResponse:
        if request.model_version < 0:
            raise _invalid(f"model_version must be >= 0 (0 = latest), got {request.model_version}")
        which = request.WhichOneof("embedding")
        if which is None:
            raise _invalid("send an embedding: `encrypted` (CKKS) or `plain`")
        query = PersonalizeQuery(
            alpha=request.alpha,
            indices=list(request.indices),
            encrypted=request.encrypted if which == "encrypted" else None,
            encrypted_sha256=request.encrypted_sha256,
            plain=np.asarray(request.plain.values) if which == "plain" else None,
            model_name=request.model_name or DEFAULT_HYPERNET,
            model_version=request.model_version or None,
            embedding_kind=request.embedding_kind,
        )
        answer = self._personalization.personalize(current_device().id, query)
        hypernet = answer.hypernet
        response = gateway_pb2.PersonalizeResponse(
            model_name=hypernet.record.name,
            model_version=hypernet.record.version,
            model_sha256=hypernet.record.artifact_sha256,
            embed_dim=hypernet.config.embed_dim,
            num_classes=hypernet.config.num_classes,
            theta_ciphertexts=answer.theta_ciphertexts,
            he_seconds=answer.he_seconds,
            embedding_kind=hypernet.embedding.key,
        )
        if answer.theta_plain is not None:
            response.theta_plain.values.extend(answer.theta_plain.tolist())
        familiarity = hypernet.familiarity
        if familiarity is not None:  # its bytes only when the device lacks this one
            response.familiarity.sha256 = familiarity.sha256
            if request.familiarity_sha256 != familiarity.sha256:
                response.familiarity.reference = familiarity.to_bytes()
        return response
