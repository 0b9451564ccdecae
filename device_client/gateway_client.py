"""The device's side of the gRPC gateway (``proto/secdood/v1/gateway.proto``).

:class:`GatewayClient` wraps the generated stub with what a device needs:
credentials in metadata, 1 MiB chunking with a whole-payload sha256 for
uploads, and downloads that are verified (size and sha256) in a temporary file
and only then renamed into place — a failed or partial download leaves the
destination untouched and no temporary file behind. Every failure is a
:class:`GatewayClientError` with a one-line message.

A call the server refuses for overload (``RESOURCE_EXHAUSTED`` with trailing
metadata ``retry-after-ms``) is retried with jittered exponential backoff
(:class:`RetryPolicy`), never sooner than the server asked; other refusals,
e.g. an upload over the size cap, are not retried.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import grpc

from device_client.retry import DEFAULT_RETRY, RetryPolicy, retry_hint_s
from shared.model_names import BASE_MODEL
from shared.rpc import gateway_pb2, gateway_pb2_grpc
from shared.wire import CHUNK_BYTES, MAX_MESSAGE_BYTES

_Result = TypeVar("_Result")

DEFAULT_TIMEOUT_S = 60.0


class GatewayClientError(RuntimeError):
    """A gateway call failed; ``code`` is the gRPC status code when the server answered."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class ServerUnreachableError(GatewayClientError):
    """No connection to the server (wrong address, server down, TLS mismatch)."""


class DownloadIntegrityError(GatewayClientError):
    """The downloaded bytes do not match the announced size or sha256."""


class Enrollment(NamedTuple):
    """What enrolment hands back; the token is shown only this once."""

    device_id: str
    token: str
    expires_at: int


class UploadReceipt(NamedTuple):
    sha256: str
    size_bytes: int


class PersonalizeReply(NamedTuple):
    """The cloud's answer to Personalize, plus what crossed the wire (protobuf bytes)."""

    theta_ciphertexts: list[bytes]
    theta_plain: list[float]
    model_name: str
    model_version: int
    model_sha256: str
    embed_dim: int
    num_classes: int
    he_seconds: float
    bytes_up: int
    bytes_down: int
    #: sha256 of H's familiarity reference ("" when H has none) and its bytes (empty when
    #: the request said the device already holds it)
    familiarity_sha256: str = ""
    familiarity: bytes = b""
    #: the embeddings H reads ("" from an older cloud)
    embedding_kind: str = ""


class PersonalizeTransport(Protocol):
    """What carries a request to the cloud; :class:`GatewayClient` is one."""

    def personalize(
        self,
        alpha: float,
        indices: list[int],
        encrypted: bytes | None = None,
        plain: list[float] | None = None,
        familiarity_sha256: str = "",
        embedding_kind: str = "none",
    ) -> PersonalizeReply: ...


def _error_from_rpc(error: grpc.RpcError, target: str) -> GatewayClientError:
    code = error.code() if isinstance(error, grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ServerUnreachableError(f"server {target} unreachable: {details}", code)
    name = code.name if code is not None else "ERROR"
    return GatewayClientError(f"{name}: {details}", code)


def _read_pem(root_cert: bytes | str | os.PathLike[str]) -> bytes:
    if isinstance(root_cert, bytes):
        return root_cert
    path = Path(root_cert)
    if not path.is_file():
        raise FileNotFoundError(f"TLS root certificate not found: {path}")
    return path.read_bytes()


class GatewayClient:
    """A connection to the device gateway at ``target`` (``host:port``).

    ``token`` authenticates every call but :meth:`enroll` (which sets it).
    ``root_cert`` (PEM bytes or a file path) switches to TLS and says which
    certificate to trust; without it the channel is plaintext. ``interceptors``
    (gRPC client interceptors) see every call, e.g. to audit what leaves the device.
    """

    def __init__(
        self,
        target: str,
        token: str | None = None,
        root_cert: bytes | str | os.PathLike[str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        interceptors: Sequence[grpc.UnaryUnaryClientInterceptor | Any] = (),
    ) -> None:
        if not isinstance(target, str) or ":" not in target:
            raise ValueError(f"target must be 'host:port', got {target!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.target = target
        self.token = token
        self.timeout_s = timeout_s
        self.retry = retry
        #: overload refusals retried so far (for load tests and logs)
        self.retries = 0
        self._rng = random.Random()
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if root_cert is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=_read_pem(root_cert))
            self._channel = grpc.secure_channel(target, credentials, options=options)
        if interceptors:
            self._channel = grpc.intercept_channel(self._channel, *interceptors)
        self._stub = gateway_pb2_grpc.DeviceGatewayStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _with_retries(self, call: Callable[[], _Result]) -> _Result:
        """Run ``call``; retry overload refusals per :attr:`retry`; map errors to ours."""
        for attempt in range(self.retry.attempts):
            try:
                return call()
            except grpc.RpcError as error:
                hint = retry_hint_s(error)
                if hint is None or attempt + 1 >= self.retry.attempts:
                    raise _error_from_rpc(error, self.target) from None
                self.retries += 1
                time.sleep(self.retry.delay(attempt, hint, self._rng))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _token_metadata(self) -> tuple[tuple[str, str], ...]:
        if not self.token:
            raise GatewayClientError("no device token: enrol first or pass token=...")
        return (("authorization", f"Bearer {self.token}"),)

    # -- RPCs ----------------------------------------------------------------------------

    def enroll(
        self, enrollment_key: str, name: str, profile: Mapping[str, Any] | None = None
    ) -> Enrollment:
        """Register this device; ``profile`` keys: corruption, severity, hardware.

        The returned token is also kept on this client for the following calls.
        """
        profile = dict(profile or {})
        unknown = set(profile) - {"corruption", "severity", "hardware"}
        if unknown:
            raise ValueError(
                f"unknown profile keys {sorted(unknown)}; expected corruption, severity, hardware"
            )
        request = gateway_pb2.EnrollRequest(
            name=name,
            profile=gateway_pb2.DeviceProfile(
                corruption=profile.get("corruption") or "",
                severity=int(profile.get("severity") or 0),
                hardware=profile.get("hardware") or "",
            ),
        )
        response = self._with_retries(
            lambda: self._stub.Enroll(
                request,
                metadata=(("x-secdood-enrollment-key", enrollment_key),),
                timeout=self.timeout_s,
            )
        )
        self.token = response.token
        return Enrollment(response.device_id, response.token, response.token_expires_at)

    def upload_context(self, data: bytes, chunk_bytes: int = CHUNK_BYTES) -> UploadReceipt:
        """Upload a serialised *public* CKKS context in chunks (sha256 + size on the first)."""
        if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
            raise ValueError("data must be non-empty bytes (ctx.serialize() of a public context)")
        if not 0 < chunk_bytes <= CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be in 1..{CHUNK_BYTES}, got {chunk_bytes}")
        payload = bytes(data)
        sha256 = hashlib.sha256(payload).hexdigest()

        def chunks() -> Iterator[gateway_pb2.ContextChunk]:
            for start in range(0, len(payload), chunk_bytes):
                piece = payload[start : start + chunk_bytes]
                if start == 0:
                    yield gateway_pb2.ContextChunk(
                        sha256=sha256, total_bytes=len(payload), data=piece
                    )
                else:
                    yield gateway_pb2.ContextChunk(data=piece)

        metadata = self._token_metadata()
        response = self._with_retries(
            lambda: self._stub.UploadContext(chunks(), metadata=metadata, timeout=self.timeout_s)
        )
        return UploadReceipt(response.sha256, response.size_bytes)

    def download_model(
        self,
        dest_path: str | os.PathLike[str],
        name: str = BASE_MODEL,
        variant: str = "float",
        version: int = 0,
    ) -> gateway_pb2.ModelInfo:
        """Download a model artifact to ``dest_path`` (version 0 = latest); return its info.

        Bytes go to a temporary file beside ``dest_path``; only after size and
        sha256 match the server's ModelInfo is it renamed over ``dest_path``.
        """
        dest = Path(dest_path)
        if not dest.parent.is_dir():
            raise FileNotFoundError(f"destination folder does not exist: {dest.parent}")
        request = gateway_pb2.GetModelRequest(name=name, variant=variant, version=version)
        fd, temp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as file:

                def receive() -> gateway_pb2.ModelInfo:
                    file.seek(0)
                    file.truncate()
                    return self._receive_model(request, file)

                info = self._with_retries(receive)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp_name, dest)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        return info

    def _receive_model(
        self, request: gateway_pb2.GetModelRequest, file: Any
    ) -> gateway_pb2.ModelInfo:
        digest = hashlib.sha256()
        received = 0
        info: gateway_pb2.ModelInfo | None = None
        metadata = self._token_metadata()
        # a grpc.RpcError propagates to _with_retries, which retries or maps it
        for chunk in self._stub.GetModel(request, metadata=metadata, timeout=self.timeout_s):
            if chunk.HasField("info"):
                if info is not None:
                    raise DownloadIntegrityError("server sent ModelInfo twice")
                info = chunk.info
                continue
            if info is None:
                raise DownloadIntegrityError("server sent data before ModelInfo")
            received += len(chunk.data)
            if received > info.size_bytes:
                raise DownloadIntegrityError(
                    f"server sent more than the announced {info.size_bytes} bytes"
                )
            digest.update(chunk.data)
            file.write(chunk.data)
        if info is None:
            raise DownloadIntegrityError("server closed the download without ModelInfo")
        if received != info.size_bytes:
            raise DownloadIntegrityError(
                f"download incomplete: received {received} of {info.size_bytes} bytes"
            )
        if digest.hexdigest() != info.sha256:
            raise DownloadIntegrityError(
                f"download corrupt: sha256 {digest.hexdigest()} != announced {info.sha256}"
            )
        return info

    def report_telemetry(
        self,
        clips_scored: int,
        ood_flagged: int,
        mean_latency_ms: float,
        frames_per_second: float,
        model_sha256: str = "",
        metrics: Mapping[str, float] | None = None,
    ) -> bool:
        """Send one telemetry report; returns whether the server accepted it."""
        values = {"mean_latency_ms": mean_latency_ms, "frames_per_second": frames_per_second}
        values.update(metrics or {})
        for key, value in values.items():
            if not math.isfinite(value):
                raise ValueError(f"telemetry value {key!r} is {value}; it must be finite")
        report = gateway_pb2.TelemetryReport(
            clips_scored=clips_scored,
            ood_flagged=ood_flagged,
            mean_latency_ms=mean_latency_ms,
            frames_per_second=frames_per_second,
            model_sha256=model_sha256,
            metrics=dict(metrics or {}),
        )
        metadata = self._token_metadata()
        ack = self._with_retries(
            lambda: self._stub.ReportTelemetry(report, metadata=metadata, timeout=self.timeout_s)
        )
        return ack.accepted

    def personalize(
        self,
        alpha: float,
        indices: Sequence[int],
        encrypted: bytes | None = None,
        plain: Sequence[float] | None = None,
        model_name: str = "",
        model_version: int = 0,
        familiarity_sha256: str = "",
        embedding_kind: str = "none",
    ) -> PersonalizeReply:
        """One Personalize round trip: Enc(z[indices]) (or plain values) up, Θ down.

        Pass exactly one of ``encrypted`` (``CKKSVector.serialize()``; its sha256 is
        added here) or ``plain``. The cloud validates everything; refusals arrive as
        :class:`GatewayClientError` with the gRPC code (e.g. INVALID_ARGUMENT).
        ``familiarity_sha256``: the familiarity reference the device holds (not resent);
        ``embedding_kind``: the embeddings sent (:mod:`shared.embedding_adaptation` key).
        """
        if (encrypted is None) == (plain is None):
            raise ValueError("pass exactly one of encrypted= (ciphertext bytes) or plain=")
        request = gateway_pb2.PersonalizeRequest(
            model_name=model_name,
            model_version=model_version,
            alpha=float(alpha),
            indices=[int(i) for i in indices],
            familiarity_sha256=familiarity_sha256,
            embedding_kind=embedding_kind,
        )
        if encrypted is not None:
            request.encrypted = bytes(encrypted)
            request.encrypted_sha256 = hashlib.sha256(request.encrypted).hexdigest()
        else:
            request.plain.values.extend(float(v) for v in plain or ())
        metadata = self._token_metadata()
        response = self._with_retries(
            lambda: self._stub.Personalize(request, metadata=metadata, timeout=self.timeout_s)
        )
        return PersonalizeReply(
            theta_ciphertexts=list(response.theta_ciphertexts),
            theta_plain=list(response.theta_plain.values),
            model_name=response.model_name,
            model_version=response.model_version,
            model_sha256=response.model_sha256,
            embed_dim=response.embed_dim,
            num_classes=response.num_classes,
            he_seconds=response.he_seconds,
            bytes_up=request.ByteSize(),
            bytes_down=response.ByteSize(),
            familiarity_sha256=response.familiarity.sha256,
            familiarity=response.familiarity.reference,
            embedding_kind=response.embedding_kind,
        )
