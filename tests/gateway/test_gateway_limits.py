"""No single client can stall the gateway: caps, reserved threads, the watchdog, retries."""

from __future__ import annotations

import hashlib
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from device_client.gateway_client import GatewayClient
from device_client.retry import RetryPolicy
from server.gateway.limits import CallLimits
from shared.rpc import gateway_pb2, gateway_pb2_grpc
from shared.wire import RETRY_AFTER_METADATA

DATA_CAP = 4


def _stalled_upload(release: threading.Event):
    """A client stream that sends its first chunk and then waits (a stalled device)."""
    payload = b"s" * 4096
    yield gateway_pb2.ContextChunk(
        sha256=hashlib.sha256(payload).hexdigest(), total_bytes=len(payload), data=payload[:1]
    )
    release.wait(30)


def _enrol(stub, enrol_metadata, name: str):
    return stub.Enroll(gateway_pb2.EnrollRequest(name=name), metadata=enrol_metadata)


def test_stalled_uploads_at_twice_the_cap_leave_health_and_enrolment_fast(
    device_gateway_factory, enrol_metadata, snapshot
):
    gateway, stub, first = device_gateway_factory(
        grpc_max_data_streams=DATA_CAP, grpc_max_streams_per_device=2, grpc_message_timeout_s=2.0
    )
    tokens = [first.token] + [
        _enrol(stub, enrol_metadata, f"staller-{i}").token for i in range(DATA_CAP // 2)
    ]
    before = snapshot()
    release = threading.Event()
    calls = []
    for index in range(2 * DATA_CAP):  # two streams per device, twice the total cap
        metadata = (("authorization", f"Bearer {tokens[index % len(tokens)]}"),)
        calls.append(stub.UploadContext.future(_stalled_upload(release), metadata=metadata))
    time.sleep(0.5)  # let every stream reach the server

    with grpc.insecure_channel(gateway.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        fresh = gateway_pb2_grpc.DeviceGatewayStub(channel)
        for _ in range(3):
            started = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            assert time.perf_counter() - started < 1.0
            started = time.perf_counter()
            _enrol(fresh, enrol_metadata, "newcomer")
            assert time.perf_counter() - started < 1.0

    # Over the cap: refused at once with RESOURCE_EXHAUSTED and a retry hint.
    refused = [call for call in calls if call.done()]
    assert len(refused) >= DATA_CAP
    for call in refused:
        assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, call.details()
        assert "limit" in call.details()
        assert RETRY_AFTER_METADATA in dict(call.trailing_metadata())
    # The admitted ones are cut off by the watchdog once they stall past the timeout.
    for call in calls:
        with pytest.raises(grpc.RpcError):
            call.result(timeout=10)
    stalled = [call for call in calls if call.code() == grpc.StatusCode.DEADLINE_EXCEEDED]
    assert len(stalled) == DATA_CAP
    assert all("no message for 2 s" in call.details() for call in stalled)
    release.set()
    devices, contexts, telemetry, files = snapshot()
    assert (contexts, telemetry, files) == before[1:]  # only the newcomers were added


def test_a_slow_upload_is_cut_off_below_the_minimum_rate(device_gateway_factory, monkeypatch):
    monkeypatch.setattr("server.gateway.limits.RATE_GRACE_S", 0.5)
    gateway, stub, device = device_gateway_factory(grpc_min_upload_bytes_per_s=10_000)
    payload = b"t" * 100_000

    def trickle():
        yield gateway_pb2.ContextChunk(
            sha256=hashlib.sha256(payload).hexdigest(), total_bytes=len(payload), data=b"t"
        )
        for _ in range(100):
            time.sleep(0.1)
            yield gateway_pb2.ContextChunk(data=b"t" * 10)

    with pytest.raises(grpc.RpcError) as caught:
        stub.UploadContext(trickle(), metadata=device.metadata, timeout=20)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "below the minimum of 10000 bytes/s" in caught.value.details()


def test_chunk_count_and_empty_chunks_are_limited(device_gateway_factory, snapshot):
    gateway, stub, device = device_gateway_factory(max_upload_bytes=64 * 1024)
    before = snapshot()
    payload = b"c" * 1000
    first = gateway_pb2.ContextChunk(
        sha256=hashlib.sha256(payload).hexdigest(), total_bytes=len(payload), data=b"c"
    )
    many = [first] + [gateway_pb2.ContextChunk(data=b"c") for _ in range(200)]
    with pytest.raises(grpc.RpcError) as caught:
        stub.UploadContext(iter(many), metadata=device.metadata)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 64 chunks, the limit" in caught.value.details()
    empty = [first] + [gateway_pb2.ContextChunk() for _ in range(10)]
    with pytest.raises(grpc.RpcError) as caught:
        stub.UploadContext(iter(empty), metadata=device.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 4 empty chunks" in caught.value.details()
    assert snapshot() == before


def test_call_limits_count_per_device_and_release_once():
    limits = CallLimits(max_data=3, per_device=2, max_telemetry=1, max_enroll=1)
    upload = "/secdood.v1.DeviceGateway/UploadContext"
    first = limits.claim(upload, "a")
    limits.claim(upload, "a")
    with pytest.raises(Exception, match="per device"):
        limits.claim(upload, "a")
    limits.claim(upload, "b")
    with pytest.raises(Exception, match="3 data calls"):
        limits.claim(upload, "c")
    # Telemetry has its own allowance: it never waits behind data calls.
    limits.claim("/secdood.v1.DeviceGateway/ReportTelemetry", "a")
    first()
    first()  # a second release changes nothing
    assert limits.in_flight() == {"data": 2, "he": 0, "telemetry": 1, "enroll": 0}
    limits.claim(upload, "c")


def test_encrypted_evaluations_have_their_own_cap():
    limits = CallLimits(max_data=4, per_device=4, max_telemetry=1, max_enroll=1, max_he=1)
    personalize = "/secdood.v1.DeviceGateway/Personalize"
    release = limits.claim(personalize, "a")
    with pytest.raises(Exception, match="1 encrypted evaluations in flight"):
        limits.claim(personalize, "b")
    limits.claim("/secdood.v1.DeviceGateway/GetModel", "b")  # other data calls still run
    release()
    limits.claim(personalize, "b")


def test_a_busy_registry_is_a_retryable_refusal():
    from sqlalchemy.exc import OperationalError

    from server.gateway.errors import status_for

    busy = OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))
    code, message = status_for(busy)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "registry is busy" in message


def test_the_device_client_retries_overload_with_backoff(device_gateway_factory):
    gateway, stub, device = device_gateway_factory(
        grpc_max_data_streams=1, grpc_message_timeout_s=1.0
    )
    release = threading.Event()
    blocker = stub.UploadContext.future(_stalled_upload(release), metadata=device.metadata)
    time.sleep(0.3)
    client = GatewayClient(
        gateway.target, token=device.token, retry=RetryPolicy(attempts=10, base_s=0.2, max_s=1)
    )
    with client:
        started = time.monotonic()
        with pytest.raises(Exception, match="NOT_FOUND|FAILED_PRECONDITION"):
            client.personalize(0.25, [0, 1], plain=[0.0, 0.0])  # no H registered: NOT_FOUND
        assert client.retries >= 1  # refused while the blocker held the only data slot
        assert time.monotonic() - started >= 0.5
    release.set()
    with pytest.raises(grpc.RpcError):
        blocker.result(timeout=10)


def test_the_context_cache_is_bounded_by_bytes(
    gateway, registry, stub, enrol_metadata, ckks_contexts
):
    from server.personalization import PersonalizationService

    data = ckks_contexts["public"]
    devices = []
    for name in ("a", "b", "c"):
        enrolled = _enrol(stub, enrol_metadata, name)
        with GatewayClient(gateway.target, token=enrolled.token) as client:
            client.upload_context(data)
        devices.append(enrolled.device_id)
    service = PersonalizationService(registry, context_cache_bytes=int(2.5 * len(data)))
    for device_id in devices:
        service.device_context(device_id)
    assert service.cached_context_bytes() == 2 * len(data)  # the oldest was evicted


def test_calls_are_logged_with_device_status_and_duration_but_no_secrets(
    stub, enrol_metadata, caplog
):
    with caplog.at_level("INFO", logger="secdood.gateway"):
        enrolled = _enrol(stub, enrol_metadata, "logged")
        with pytest.raises(grpc.RpcError):
            stub.ReportTelemetry(
                gateway_pb2.TelemetryReport(mean_latency_ms=-1),
                metadata=(("authorization", f"Bearer {enrolled.token}"),),
            )
        with pytest.raises(grpc.RpcError):
            stub.ReportTelemetry(gateway_pb2.TelemetryReport(), metadata=(("authorization", "x"),))
    text = caplog.text
    assert f"enrolled device={enrolled.device_id}" in text
    assert f"ReportTelemetry device={enrolled.device_id} status=INVALID_ARGUMENT" in text
    assert "ReportTelemetry refused status=UNAUTHENTICATED" in text
    assert "duration_ms=" in text
    assert enrolled.token not in text and enrol_metadata[0][1] not in text
