"""GetModel through a real server, and GatewayClient.download_model's all-or-nothing file."""

from __future__ import annotations

import hashlib
import json
import math
import os

import grpc
import pytest

from device_client.gateway_client import (
    DownloadIntegrityError,
    GatewayClient,
    GatewayClientError,
)
from shared.models.checkpoint import bundle_from_bytes
from shared.rpc import gateway_pb2

MIB = 1 << 20


@pytest.fixture
def download_dir(tmp_path):
    """An empty folder of the device's own (tmp_path also holds the server's registry)."""
    folder = tmp_path / "device"
    folder.mkdir()
    return folder


def test_download_writes_the_registered_artifact_and_its_info(
    gateway, device, download_dir, tiny_bundle
):
    record = gateway.registry.latest_model("secdood_base")
    dest = download_dir / "model.pt"
    with GatewayClient(gateway.target, token=device.token) as client:
        info = client.download_model(dest)
    data = dest.read_bytes()
    assert hashlib.sha256(data).hexdigest() == record.artifact_sha256 == info.sha256
    assert len(data) == record.size_bytes == info.size_bytes
    assert (info.name, info.version, info.variant, info.method) == (
        "secdood_base",
        record.version,
        "float",
        "secdood_base",
    )
    assert json.loads(info.config_json) == record.config
    assert json.loads(info.metrics_json) == record.metrics
    # The file is a loadable model whose weights equal the registered bundle's.
    loaded = bundle_from_bytes(data)
    for name, tensor in tiny_bundle.model.state_dict().items():
        assert loaded.model.state_dict()[name].equal(tensor), name
    assert [p.name for p in download_dir.iterdir()] == ["model.pt"]


def test_model_streams_as_info_then_chunks_of_at_most_one_mib(gateway, stub, device):
    blob = os.urandom(2 * MIB + 12345)
    gateway.registry.register_model("big", "test", {"k": 1}, {"acc": 0.5}, blob, variant="int8")
    messages = list(
        stub.GetModel(
            gateway_pb2.GetModelRequest(name="big", variant="int8"), metadata=device.metadata
        )
    )
    assert messages[0].WhichOneof("payload") == "info"
    data_messages = messages[1:]
    assert all(m.WhichOneof("payload") == "data" for m in data_messages)
    assert len(data_messages) == math.ceil(len(blob) / MIB)
    assert max(len(m.data) for m in data_messages) <= MIB
    assert b"".join(m.data for m in data_messages) == blob
    assert messages[0].info.sha256 == hashlib.sha256(blob).hexdigest()


def test_empty_name_and_variant_mean_the_default_model(gateway, stub, device):
    first_version = gateway.registry.latest_model("secdood_base")
    newer = gateway.registry.artifacts.read_bytes(first_version.artifact_sha256) + b"v2"
    gateway.registry.register_model("secdood_base", "secdood_base", {"v": 2}, {}, newer)
    [info_message, *_] = stub.GetModel(gateway_pb2.GetModelRequest(), metadata=device.metadata)
    assert (info_message.info.name, info_message.info.variant) == ("secdood_base", "float")
    assert info_message.info.version == 2  # version 0 = the latest
    [first, *_] = stub.GetModel(gateway_pb2.GetModelRequest(version=1), metadata=device.metadata)
    assert first.info.version == 1


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (gateway_pb2.GetModelRequest(name="no_such_model"), "NOT_FOUND", "no_such_model"),
        (gateway_pb2.GetModelRequest(variant="int8"), "NOT_FOUND", "'int8' variant"),
        (gateway_pb2.GetModelRequest(version=7), "NOT_FOUND", "version 7"),
        (gateway_pb2.GetModelRequest(version=-1), "INVALID_ARGUMENT", "version must be >= 0"),
    ],
)
def test_unknown_models_are_not_found(stub, device, request_, code, message):
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.GetModel(request_, metadata=device.metadata))
    assert caught.value.code() == grpc.StatusCode[code]
    assert message in caught.value.details()


def test_the_client_reports_not_found_and_writes_nothing(gateway, device, download_dir):
    dest = download_dir / "model.pt"
    with GatewayClient(gateway.target, token=device.token) as client:
        with pytest.raises(GatewayClientError, match="NOT_FOUND.*nope") as caught:
            client.download_model(dest, name="nope")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert list(download_dir.iterdir()) == []


def _tamper(registry, sha256: str, change) -> None:
    """Rewrite a stored blob in place (blobs are read-only on disk)."""
    path = registry.artifacts.path(sha256)
    data = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(change(data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda data: data[:-10], "incomplete: received"),
        (lambda data: bytes([data[0] ^ 0xFF]) + data[1:], "corrupt: sha256"),
    ],
    ids=["truncated", "flipped-byte"],
)
def test_a_bad_download_leaves_the_previous_file_and_no_temp_file(
    gateway, device, download_dir, change, message
):
    dest = download_dir / "model.pt"
    dest.write_bytes(b"the previous model")
    record = gateway.registry.latest_model("secdood_base")
    _tamper(gateway.registry, record.artifact_sha256, change)
    with GatewayClient(gateway.target, token=device.token) as client:
        with pytest.raises(DownloadIntegrityError, match=message):
            client.download_model(dest)
    assert dest.read_bytes() == b"the previous model"
    assert [p.name for p in download_dir.iterdir()] == ["model.pt"]


def test_a_missing_destination_folder_is_a_clear_error(gateway, device, download_dir):
    with GatewayClient(gateway.target, token=device.token) as client:
        with pytest.raises(FileNotFoundError, match="destination folder"):
            client.download_model(download_dir / "absent" / "model.pt")
