"""Fixtures for the gateway tests: a real gRPC server on loopback and real CKKS contexts."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import tenseal
from support import make_tiny_bundle

from server.gateway import build_grpc_server
from server.registry import Registry, open_registry
from server.settings import Settings
from shared.rpc import gateway_pb2, gateway_pb2_grpc

ENROLLMENT_KEY = "test-enrollment-key"


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory) -> Path:
    """A migrated registry holding the tiny bundle as ``secdood_base``, built once per session.

    Building the bundle fits every detector (seconds on a busy 2-core machine);
    copying the finished directory per test costs milliseconds.
    """
    from shared.models.checkpoint import bundle_to_bytes

    folder = tmp_path_factory.mktemp("registry-template")
    bundle = make_tiny_bundle()
    with open_registry(None, folder) as template:
        template.register_model(
            "secdood_base", "secdood_base", {"tiny": True}, {}, bundle_to_bytes(bundle)
        )
    return folder


@pytest.fixture
def registry(registry_template, tmp_path) -> Iterator[Registry]:
    """Overrides tests/conftest.py's ``registry``: the same content, from a copied template."""
    folder = tmp_path / "registry"
    shutil.copytree(registry_template, folder)
    with open_registry(None, folder) as copy:
        yield copy


@dataclass
class RunningGateway:
    """A started gateway, its address and what the test needs to inspect it."""

    server: grpc.Server
    target: str
    health: object
    registry: Registry
    settings: Settings


def make_settings(tmp_path, **overrides) -> Settings:
    values = dict(
        data_dir=tmp_path,
        host="127.0.0.1",
        grpc_port=0,
        enrollment_key=ENROLLMENT_KEY,
        token_ttl_seconds=3600,
        max_upload_bytes=16 * 1024 * 1024,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def gateway_settings(tmp_path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def gateway(registry, gateway_settings) -> Iterator[RunningGateway]:
    server, port, health = build_grpc_server(registry, gateway_settings, readiness=lambda: False)
    server.start()
    try:
        yield RunningGateway(server, f"127.0.0.1:{port}", health, registry, gateway_settings)
    finally:
        server.stop(grace=None).wait()


@pytest.fixture
def device_gateway_factory(registry, tmp_path, enrol_metadata):
    """Start a gateway with other settings; returns ``(gateway, stub, enrolled device)``."""
    started: list[tuple[grpc.Server, grpc.Channel]] = []

    def start(**overrides):
        settings = make_settings(tmp_path, **overrides)
        server, port, health = build_grpc_server(registry, settings)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        stub = gateway_pb2_grpc.DeviceGatewayStub(channel)
        response = stub.Enroll(gateway_pb2.EnrollRequest(name="cam"), metadata=enrol_metadata)
        running = RunningGateway(server, f"127.0.0.1:{port}", health, registry, settings)
        return running, stub, EnrolledDevice(response.device_id, response.token)

    yield start
    for server, channel in started:
        channel.close()
        server.stop(grace=None).wait()


@pytest.fixture
def channel(gateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.target) as open_channel:
        yield open_channel


@pytest.fixture
def stub(channel) -> gateway_pb2_grpc.DeviceGatewayStub:
    return gateway_pb2_grpc.DeviceGatewayStub(channel)


def _ckks_context() -> tenseal.Context:
    # The smallest ring that holds a useful CKKS chain; keeps key generation under a second.
    context = tenseal.context(
        tenseal.SCHEME_TYPE.CKKS, poly_modulus_degree=4096, coeff_mod_bit_sizes=[40, 20, 40]
    )
    context.global_scale = 2**20
    context.generate_galois_keys()
    return context


@pytest.fixture(scope="session")
def ckks_contexts() -> dict[str, bytes]:
    """Serialised CKKS contexts: ``public`` (what a device uploads) and ``private``."""
    context = _ckks_context()
    private = context.serialize(save_secret_key=True)
    context.make_context_public()
    return {"public": context.serialize(), "private": private}


def registry_snapshot(registry: Registry) -> tuple:
    """Counts of devices, contexts and telemetry rows, and the artifact files on disk."""
    devices = registry.list_devices()
    contexts = sum(len(registry.list_contexts(device.id)) for device in devices)
    telemetry = sum(len(registry.list_telemetry(device.id, limit=None)) for device in devices)
    files = sorted(str(p.relative_to(registry.artifacts.root)) for p in _files(registry))
    return len(devices), contexts, telemetry, files


def _files(registry: Registry):
    return [path for path in registry.artifacts.root.rglob("*") if path.is_file()]


@pytest.fixture
def snapshot(registry):
    """Call it before and after a refused RPC: the two results must be equal."""
    return lambda: registry_snapshot(registry)


@dataclass
class EnrolledDevice:
    device_id: str
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


@pytest.fixture
def enrol_metadata() -> tuple[tuple[str, str], ...]:
    """The metadata that admits an Enroll call on the test gateway."""
    return (("x-secdood-enrollment-key", ENROLLMENT_KEY),)


@pytest.fixture
def device(stub, enrol_metadata) -> EnrolledDevice:
    response = stub.Enroll(gateway_pb2.EnrollRequest(name="cam-test"), metadata=enrol_metadata)
    return EnrolledDevice(response.device_id, response.token)
