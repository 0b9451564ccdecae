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
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import numpy as np

from server.gateway.auth import current_device
from server.gateway.errors import GatewayError, status_for
from server.gateway.he_context import check_public_ckks_context
from server.gateway.uploads import receive_upload
from server.personalization import (
    DEFAULT_HYPERNET,
    MissingContextError,
    PersonalizationService,
    PersonalizeQuery,
)
from server.registry import Registry
from server.registry.artifacts import CHUNK_BYTES
from shared.data.corruptions import CORRUPTIONS
from shared.rpc import gateway_pb2, gateway_pb2_grpc

DEFAULT_MODEL = "secdood_base"
DEFAULT_VARIANT = "float"
#: largest severity of the corruption suite; 0 means "no corruption"
MAX_SEVERITY = 5
MAX_PROFILE_TEXT = 100
MAX_TELEMETRY_METRICS = 64

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _as_grpc_status(method: _Method) -> _Method:
    """Turn any exception of ``method`` into ``context.abort(code, message)``.

    ``abort`` is called outside the ``except`` block on purpose: it raises an
    exception of its own, which must not be caught and translated again.
    """
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
                return
            except Exception as error:
                code, message = status_for(error)
            context.abort(code, message)

        return streaming  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as error:
            code, message = status_for(error)
        context.abort(code, message)

    return unary  # type: ignore[return-value]


def _invalid(message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _profile_dict(profile: gateway_pb2.DeviceProfile) -> dict[str, Any]:
    """The registry's JSON form of a device profile, after range checks."""
    for field in ("corruption", "hardware"):
        if len(getattr(profile, field)) > MAX_PROFILE_TEXT:
            raise _invalid(f"profile.{field} must be at most {MAX_PROFILE_TEXT} characters")
    if not 0 <= profile.severity <= MAX_SEVERITY:
        raise _invalid(f"profile.severity must be in 0..{MAX_SEVERITY}, got {profile.severity}")
    if profile.corruption and profile.severity == 0:
        raise _invalid("profile.severity must be 1..5 when profile.corruption is set")
    if not profile.corruption and profile.severity:
        raise _invalid("profile.severity is set but profile.corruption is empty")
    if profile.corruption and profile.corruption not in CORRUPTIONS:
        raise _invalid(
            f"unknown profile.corruption {profile.corruption!r}; expected one of "
            f"{', '.join(CORRUPTIONS)}"
        )
    return {
        "corruption": profile.corruption,
        "severity": profile.severity,
        "hardware": profile.hardware,
    }


def _telemetry_payload(report: gateway_pb2.TelemetryReport) -> dict[str, Any]:
    """The registry's JSON form of a telemetry report; NaN/inf and negatives are refused."""
    numbers = {
        "mean_latency_ms": report.mean_latency_ms,
        "frames_per_second": report.frames_per_second,
    }
    if len(report.metrics) > MAX_TELEMETRY_METRICS:
        raise _invalid(
            f"at most {MAX_TELEMETRY_METRICS} telemetry metrics, got {len(report.metrics)}"
        )
    for name, value in report.metrics.items():
        if not name or len(name) > MAX_PROFILE_TEXT:
            raise _invalid(f"telemetry metric names must be 1..{MAX_PROFILE_TEXT} characters")
        if not math.isfinite(value):
            raise _invalid(f"telemetry metric {name!r} is {value}; values must be finite")
    for name, value in numbers.items():
        if not math.isfinite(value) or value < 0:
            raise _invalid(f"telemetry {name} is {value}; it must be a finite number >= 0")
    if report.ood_flagged > report.clips_scored:
        raise _invalid(
            f"telemetry ood_flagged ({report.ood_flagged}) exceeds clips_scored "
            f"({report.clips_scored})"
        )
    sha = report.model_sha256
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise _invalid("telemetry model_sha256 must be empty or 64 lowercase hex characters")
    return {
        "clips_scored": report.clips_scored,
        "ood_flagged": report.ood_flagged,
        **numbers,
        "model_sha256": sha,
        "metrics": dict(report.metrics),
    }


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
        self._personalization = personalization or PersonalizationService(registry)

    @_as_grpc_status
    def Enroll(  # noqa: N802 - gRPC method names are CamelCase
        self, request: gateway_pb2.EnrollRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.EnrollResponse:
        if not request.name.strip():
            raise _invalid("device name must not be empty")
        device, token = self._registry.enroll_device(request.name, _profile_dict(request.profile))
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
        data, sha256 = receive_upload(request_iterator, self._max_upload_bytes)
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
        self._registry.add_telemetry(current_device().id, _telemetry_payload(request))
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
        )
        try:
            answer = self._personalization.personalize(current_device().id, query)
        except MissingContextError as error:
            raise GatewayError(grpc.StatusCode.FAILED_PRECONDITION, str(error)) from None
        hypernet = answer.hypernet
        response = gateway_pb2.PersonalizeResponse(
            model_name=hypernet.record.name,
            model_version=hypernet.record.version,
            model_sha256=hypernet.record.artifact_sha256,
            embed_dim=hypernet.config.embed_dim,
            num_classes=hypernet.config.num_classes,
            theta_ciphertexts=answer.theta_ciphertexts,
            he_seconds=answer.he_seconds,
        )
        if answer.theta_plain is not None:
            response.theta_plain.values.extend(answer.theta_plain.tolist())
        return response
