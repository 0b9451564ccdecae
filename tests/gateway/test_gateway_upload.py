"""UploadContext through a real server: framing, limits, and the public-CKKS check."""

from __future__ import annotations

import hashlib

import grpc
import pytest
import tenseal

from device_client.gateway_client import GatewayClient, GatewayClientError
from server.gateway.he_context import PRIVATE_CONTEXT
from shared.rpc import gateway_pb2

MIB = 1 << 20


def _chunks(data: bytes, sha256: str | None = None, total: int | None = None, size: int = MIB):
    """The chunk messages of ``data`` (framing fields overridable to simulate bad clients)."""
    sha256 = hashlib.sha256(data).hexdigest() if sha256 is None else sha256
    total = len(data) if total is None else total
    messages = []
    for start in range(0, len(data), size):
        piece = data[start : start + size]
        if start == 0:
            messages.append(gateway_pb2.ContextChunk(sha256=sha256, total_bytes=total, data=piece))
        else:
            messages.append(gateway_pb2.ContextChunk(data=piece))
    return messages


def _refused(stub, device, messages, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        stub.UploadContext(iter(messages), metadata=device.metadata)
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


def test_a_public_context_is_stored_as_the_devices_current_context(gateway, device, ckks_contexts):
    data = ckks_contexts["public"]
    assert len(data) > 2 * MIB  # so the upload really is several chunks
    with GatewayClient(gateway.target, token=device.token) as client:
        receipt = client.upload_context(data)
    expected_sha = hashlib.sha256(data).hexdigest()
    assert receipt == (expected_sha, len(data))
    current = gateway.registry.current_context(device.device_id)
    assert (current.artifact_sha256, current.size_bytes, current.is_public) == (
        expected_sha,
        len(data),
        True,
    )
    stored = gateway.registry.artifacts.read_bytes(expected_sha)
    assert stored == data
    assert tenseal.context_from(stored).is_public()


def test_a_private_context_is_refused_and_never_stored(stub, device, snapshot, ckks_contexts):
    before = snapshot()
    details = _refused(
        stub, device, _chunks(ckks_contexts["private"]), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details == PRIVATE_CONTEXT
    assert snapshot() == before


def test_bytes_that_are_no_tenseal_context_are_refused(stub, device, snapshot):
    before = snapshot()
    details = _refused(
        stub, device, _chunks(b"definitely not a context" * 100), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "not a serialised TenSEAL context" in details
    assert snapshot() == before


def test_a_bfv_context_is_refused(stub, device, snapshot):
    context = tenseal.context(
        tenseal.SCHEME_TYPE.BFV, poly_modulus_degree=4096, plain_modulus=1032193
    )
    context.make_context_public()
    before = snapshot()
    details = _refused(stub, device, _chunks(context.serialize()), grpc.StatusCode.INVALID_ARGUMENT)
    assert "BFV" in details and "CKKS" in details
    assert snapshot() == before


def test_a_stream_that_ends_early_is_data_loss(stub, device, snapshot, ckks_contexts):
    data = ckks_contexts["public"]
    messages = _chunks(data)
    before = snapshot()
    details = _refused(stub, device, messages[:-1], grpc.StatusCode.DATA_LOSS)
    assert "truncated" in details
    received = sum(len(m.data) for m in messages[:-1])
    assert f"received {received} of {len(data)} bytes" in details
    assert snapshot() == before


def test_a_sha256_mismatch_is_data_loss(stub, device, snapshot, ckks_contexts):
    data = ckks_contexts["public"]
    wrong_sha = hashlib.sha256(data + b"x").hexdigest()
    before = snapshot()
    details = _refused(stub, device, _chunks(data, sha256=wrong_sha), grpc.StatusCode.DATA_LOSS)
    assert "sha256 mismatch" in details and wrong_sha in details
    # Same length, one flipped byte: also caught by the digest.
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    messages = _chunks(bytes(flipped), sha256=hashlib.sha256(data).hexdigest())
    assert "sha256 mismatch" in _refused(stub, device, messages, grpc.StatusCode.DATA_LOSS)
    assert snapshot() == before


def test_a_client_that_aborts_mid_stream_leaves_nothing(gateway, stub, device, snapshot):
    before = snapshot()
    data = bytes(range(256)) * (3 * MIB // 256)
    messages = _chunks(data)

    def failing_stream():
        yield messages[0]
        yield messages[1]
        raise RuntimeError("camera unplugged")

    with pytest.raises(grpc.RpcError) as caught:
        stub.UploadContext(failing_stream(), metadata=device.metadata)
    assert caught.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
    gateway.server.stop(grace=2).wait()  # let the server finish its side of the call
    assert snapshot() == before
    assert not list(gateway.registry.artifacts.root.glob(".incoming-*"))


@pytest.mark.parametrize(
    ("sha256", "total", "message"),
    [
        ("", None, "sha256"),
        ("xyz", None, "sha256"),
        (None, 0, "total_bytes > 0"),
        (None, 10, "longer than the declared total_bytes=10"),
    ],
)
def test_bad_framing_is_invalid_argument(stub, device, snapshot, sha256, total, message):
    before = snapshot()
    messages = _chunks(b"some bytes of a context", sha256=sha256, total=total)
    details = _refused(stub, device, messages, grpc.StatusCode.INVALID_ARGUMENT)
    assert message in details
    assert snapshot() == before


def test_framing_fields_on_a_later_chunk_or_no_chunks_are_invalid(stub, device, snapshot):
    before = snapshot()
    data = b"a" * 100
    messages = _chunks(data, size=50)
    messages[1].total_bytes = 100
    assert "only the first chunk" in _refused(
        stub, device, messages, grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "no chunks" in _refused(stub, device, [], grpc.StatusCode.INVALID_ARGUMENT)
    assert snapshot() == before


def test_uploads_over_the_size_cap_are_resource_exhausted(
    registry, tmp_path, device_gateway_factory, ckks_contexts
):
    data = ckks_contexts["public"]
    cap = 2 * MIB
    gateway, stub, device = device_gateway_factory(max_upload_bytes=cap)
    before = [len(registry.list_devices()), len(registry.list_contexts(device.device_id))]
    # Declared size over the cap: refused before the data is read.
    details = _refused(stub, device, _chunks(data), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert f"exceeds the server limit of {cap} bytes" in details
    # A client that under-declares is stopped by the bytes actually received.
    details = _refused(stub, device, _chunks(data, total=cap), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert f"exceeds the server limit of {cap} bytes" in details
    after = [len(registry.list_devices()), len(registry.list_contexts(device.device_id))]
    assert before == after == [1, 0]


def test_a_chunk_larger_than_one_mib_plus_framing_is_refused(stub, device, snapshot):
    before = snapshot()
    data = b"z" * (MIB + 128 * 1024)
    details = _refused(
        stub, device, _chunks(data, size=len(data)), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert "message larger than max" in details.lower() or "received message" in details.lower()
    assert snapshot() == before


def test_the_client_rejects_empty_payloads_before_calling(gateway, device):
    with GatewayClient(gateway.target, token=device.token) as client:
        with pytest.raises(ValueError, match="non-empty bytes"):
            client.upload_context(b"")
        with pytest.raises(ValueError, match="chunk_bytes"):
            client.upload_context(b"x", chunk_bytes=2 * MIB)
    with GatewayClient(gateway.target) as anonymous:
        with pytest.raises(GatewayClientError, match="no device token"):
            anonymous.upload_context(b"x")
