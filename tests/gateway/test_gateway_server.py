"""Server assembly: health, reflection, telemetry, TLS and start-up errors."""

from __future__ import annotations

import math
import shutil
import subprocess

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from device_client.gateway_client import GatewayClient, ServerUnreachableError
from server.gateway import build_grpc_server, set_serving
from shared.rpc import gateway_pb2

GATEWAY = "secdood.v1.DeviceGateway"


def _health(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service)).status


def test_health_is_not_serving_until_the_caller_flips_it(gateway, channel):
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    # No token needed: load balancers probe health anonymously.
    assert _health(channel, "") == not_serving
    assert _health(channel, GATEWAY) == not_serving
    set_serving(gateway.health, True)
    assert _health(channel, "") == serving
    assert _health(channel, GATEWAY) == serving
    set_serving(gateway.health, False)
    assert _health(channel, GATEWAY) == not_serving
    with pytest.raises(grpc.RpcError) as caught:
        _health(channel, "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_readiness_sets_the_initial_health(registry, gateway_settings):
    server, port, _health_servicer = build_grpc_server(registry, gateway_settings, lambda: True)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert _health(channel, GATEWAY) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(grace=None).wait()


def test_reflection_describes_the_gateway(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {GATEWAY, "grpc.health.v1.Health"} <= services
    service = descriptor_pool.DescriptorPool(database).FindServiceByName(GATEWAY)
    expected = gateway_pb2.DESCRIPTOR.services_by_name["DeviceGateway"]
    assert [m.name for m in service.methods] == [m.name for m in expected.methods]


def test_telemetry_is_stored_for_the_calling_device(gateway, device):
    with GatewayClient(gateway.target, token=device.token) as client:
        accepted = client.report_telemetry(
            clips_scored=40,
            ood_flagged=3,
            mean_latency_ms=12.5,
            frames_per_second=25.0,
            model_sha256="ab" * 32,
            metrics={"accuracy_proxy": 0.91},
        )
    assert accepted
    [record] = gateway.registry.list_telemetry(device.device_id)
    assert record.payload == {
        "clips_scored": 40,
        "ood_flagged": 3,
        "mean_latency_ms": 12.5,
        "frames_per_second": 25.0,
        "model_sha256": "ab" * 32,
        "metrics": {"accuracy_proxy": 0.91},
    }


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (gateway_pb2.TelemetryReport(mean_latency_ms=math.nan), "mean_latency_ms is nan"),
        (gateway_pb2.TelemetryReport(frames_per_second=math.inf), "frames_per_second is inf"),
        (gateway_pb2.TelemetryReport(metrics={"acc": -math.inf}), "'acc' is -inf"),
        (gateway_pb2.TelemetryReport(mean_latency_ms=-1.0), "finite number >= 0"),
        (gateway_pb2.TelemetryReport(clips_scored=1, ood_flagged=2), "exceeds clips_scored"),
        (gateway_pb2.TelemetryReport(model_sha256="xyz"), "model_sha256"),
    ],
)
def test_bad_telemetry_is_invalid_argument(stub, device, snapshot, report, message):
    before = snapshot()
    with pytest.raises(grpc.RpcError) as caught:
        stub.ReportTelemetry(report, metadata=device.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    assert snapshot() == before


def test_the_client_refuses_non_finite_telemetry(gateway, device):
    with GatewayClient(gateway.target, token=device.token) as client:
        with pytest.raises(ValueError, match="must be finite"):
            client.report_telemetry(1, 0, math.nan, 1.0)


def test_an_unexpected_server_failure_is_internal_without_details(
    gateway, stub, device, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(gateway.registry, "add_telemetry", broken)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ReportTelemetry(gateway_pb2.TelemetryReport(), metadata=device.metadata)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internals" not in caught.value.details()


def test_build_refuses_missing_enrollment_key_and_missing_tls_files(
    registry, gateway_settings, tmp_path
):
    no_key = gateway_settings.model_copy(update={"enrollment_key": None})
    with pytest.raises(ValueError, match="enrollment_key is not set"):
        build_grpc_server(registry, no_key)
    missing = tmp_path / "absent.crt"
    no_files = gateway_settings.model_copy(update={"tls_cert": missing, "tls_key": missing})
    with pytest.raises(FileNotFoundError, match="absent.crt"):
        build_grpc_server(registry, no_files)


def test_a_port_in_use_is_an_os_error(gateway, registry, gateway_settings):
    port = int(gateway.target.rsplit(":", 1)[1])
    taken = gateway_settings.model_copy(update={"grpc_port": port})
    with pytest.raises(OSError, match="cannot bind"):
        build_grpc_server(registry, taken)


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (the openssl command of docs/protocol.md)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "30", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(folder / "server.key"), "-out", str(folder / "server.crt"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return folder / "server.crt", folder / "server.key"


def test_tls_gateway_serves_clients_that_trust_its_certificate(
    registry, gateway_settings, tls_pair, enrol_metadata
):
    cert, key = tls_pair
    settings = gateway_settings.model_copy(update={"tls_cert": cert, "tls_key": key})
    server, port, _health_servicer = build_grpc_server(registry, settings)
    server.start()
    try:
        key_value = dict(enrol_metadata)["x-secdood-enrollment-key"]
        with GatewayClient(f"127.0.0.1:{port}", root_cert=cert) as client:
            enrollment = client.enroll(key_value, "tls-cam")
            assert client.report_telemetry(1, 0, 1.0, 1.0)
        assert registry.get_device(enrollment.device_id).name == "tls-cam"
        # A plaintext client cannot talk to it.
        with GatewayClient(f"127.0.0.1:{port}", timeout_s=5) as plaintext:
            with pytest.raises(ServerUnreachableError, match="unreachable"):
                plaintext.enroll(key_value, "plain-cam")
    finally:
        server.stop(grace=None).wait()
