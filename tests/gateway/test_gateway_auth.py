"""Enrolment and device-token checks of the gateway, through a real server on loopback."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import update

from server.registry.tables import DeviceRow
from server.registry.tokens import hash_token
from shared.rpc import gateway_pb2


def _expect(code: grpc.StatusCode, call, *args, **kwargs) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


def test_enroll_returns_a_working_token_and_stores_the_profile(stub, gateway, enrol_metadata):
    before = time.time()
    response = stub.Enroll(
        gateway_pb2.EnrollRequest(
            name="cam-fog",
            profile=gateway_pb2.DeviceProfile(corruption="fog", severity=3, hardware="rpi5"),
        ),
        metadata=enrol_metadata,
    )
    [record] = gateway.registry.list_devices()
    assert record.id == response.device_id
    assert record.name == "cam-fog"
    assert record.profile == {"corruption": "fog", "severity": 3, "hardware": "rpi5"}
    ttl = gateway.settings.token_ttl_seconds
    assert response.token_expires_at == int(record.created_at.timestamp()) + ttl
    assert before - 1 <= response.token_expires_at - ttl <= time.time() + 1
    # The registry keeps only the token's hash, and the token authenticates.
    assert gateway.registry.authenticate_device(response.token).id == response.device_id
    with gateway.registry.engine.connect() as connection:
        stored_hash = connection.execute(DeviceRow.__table__.select()).one().token_hash
    assert stored_hash == hash_token(response.token) != response.token
    ack = stub.ReportTelemetry(
        gateway_pb2.TelemetryReport(clips_scored=1),
        metadata=(("authorization", f"Bearer {response.token}"),),
    )
    assert ack.accepted


@pytest.mark.parametrize(
    ("metadata", "message"),
    [((), "missing enrollment key"), ((("x-secdood-enrollment-key", "wrong"),), "invalid")],
)
def test_enroll_without_the_right_key_is_refused(stub, snapshot, metadata, message):
    before = snapshot()
    details = _expect(
        grpc.StatusCode.UNAUTHENTICATED,
        stub.Enroll,
        gateway_pb2.EnrollRequest(name="intruder"),
        metadata=metadata,
    )
    assert message in details
    assert snapshot() == before


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (gateway_pb2.EnrollRequest(name="  "), "name"),
        (gateway_pb2.EnrollRequest(name="x" * 500), "device name"),
        (
            gateway_pb2.EnrollRequest(
                name="cam", profile=gateway_pb2.DeviceProfile(corruption="fog", severity=9)
            ),
            "severity",
        ),
        (
            gateway_pb2.EnrollRequest(
                name="cam", profile=gateway_pb2.DeviceProfile(corruption="lava", severity=2)
            ),
            "unknown profile.corruption",
        ),
        (
            gateway_pb2.EnrollRequest(name="cam", profile=gateway_pb2.DeviceProfile(severity=2)),
            "corruption is empty",
        ),
    ],
)
def test_enroll_with_a_bad_request_is_invalid_argument(
    stub, snapshot, enrol_metadata, request_, message
):
    before = snapshot()
    details = _expect(
        grpc.StatusCode.INVALID_ARGUMENT, stub.Enroll, request_, metadata=enrol_metadata
    )
    assert message in details
    assert snapshot() == before


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing device token"),
        ((("authorization", "Basic abc"),), "missing device token"),
        ((("authorization", "Bearer "),), "missing device token"),
        ((("authorization", "Bearer not-a-real-token"),), "invalid or expired device token"),
    ],
)
def test_every_call_but_enroll_needs_a_valid_token(stub, device, snapshot, metadata, message):
    before = snapshot()
    calls = [
        lambda: stub.ReportTelemetry(gateway_pb2.TelemetryReport(), metadata=metadata),
        lambda: list(stub.GetModel(gateway_pb2.GetModelRequest(), metadata=metadata)),
        lambda: stub.UploadContext(
            iter([gateway_pb2.ContextChunk(sha256="0" * 64, total_bytes=1, data=b"x")]),
            metadata=metadata,
        ),
    ]
    for call in calls:
        assert message in _expect(grpc.StatusCode.UNAUTHENTICATED, call)
    assert snapshot() == before


def test_a_token_expires_ttl_seconds_after_enrolment(stub, device, gateway):
    request = gateway_pb2.TelemetryReport(clips_scored=1)
    assert stub.ReportTelemetry(request, metadata=device.metadata).accepted
    ttl = gateway.settings.token_ttl_seconds
    # Move the enrolment back in time, just past the token's lifetime.
    with gateway.registry.engine.begin() as connection:
        connection.execute(
            update(DeviceRow)
            .where(DeviceRow.id == device.device_id)
            .values(created_at=datetime.now(UTC) - timedelta(seconds=ttl + 2))
        )
    details = _expect(
        grpc.StatusCode.UNAUTHENTICATED, stub.ReportTelemetry, request, metadata=device.metadata
    )
    assert "invalid or expired device token" in details
    # Thirty seconds of lifetime left: accepted again.
    with gateway.registry.engine.begin() as connection:
        connection.execute(
            update(DeviceRow)
            .where(DeviceRow.id == device.device_id)
            .values(created_at=datetime.now(UTC) - timedelta(seconds=ttl - 30))
        )
    assert stub.ReportTelemetry(request, metadata=device.metadata).accepted


def test_the_servicer_sees_the_device_the_token_belongs_to(stub, gateway, enrol_metadata):
    tokens = {}
    for name in ("cam-a", "cam-b"):
        response = stub.Enroll(gateway_pb2.EnrollRequest(name=name), metadata=enrol_metadata)
        tokens[response.device_id] = response.token
    for device_id, token in tokens.items():
        stub.ReportTelemetry(
            gateway_pb2.TelemetryReport(clips_scored=len(device_id)),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    for device_id in tokens:
        [report] = gateway.registry.list_telemetry(device_id)
        assert report.payload["clips_scored"] == len(device_id)
