"""gRPC fuzzing: random bytes, malformed and random-valued protobufs for every RPC.

Every call must end with a definite status that is not INTERNAL or UNKNOWN (a
crash), within its deadline; afterwards the server still answers health checks
and a normal enrolment. Seeded, bounded here; ``make test-slow`` runs more.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections import Counter

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import make_hypernet

from device_client.gateway_client import GatewayClient
from shared.hypernet import hypernet_state
from shared.rpc import gateway_pb2, gateway_pb2_grpc

CASES = 25  # per RPC and kind, in `make test`
SLOW_CASES = 400
CRASHES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
RPCS = {
    "Enroll": (gateway_pb2.EnrollRequest, False, False),
    "UploadContext": (gateway_pb2.ContextChunk, True, False),
    "GetModel": (gateway_pb2.GetModelRequest, False, True),
    "ReportTelemetry": (gateway_pb2.TelemetryReport, False, False),
    "Personalize": (gateway_pb2.PersonalizeRequest, False, False),
}
_INTS = [0, 1, -1, 2**31 - 1, -(2**31), 7, 128]
_FLOATS = [0.0, -0.0, 1e308, -1e308, float("nan"), float("inf"), 0.25, -3.5, 5e-324]


def _random_text(rng: random.Random) -> str:
    length = rng.choice([0, 1, 5, 64, 300, 3000])
    return "".join(
        chr(rng.choice([rng.randint(32, 126), rng.randint(0x80, 0xD7FF)])) for _ in range(length)
    )


def _fill(message, rng: random.Random, depth: int = 0) -> None:
    """Random values in every field of ``message`` (recursively), valid protobuf but any range."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(message, field.name)
            for _ in range(rng.choice([0, 1, 3, 100])):
                key = _random_text(rng)[:50]
                try:
                    target[key] = rng.choice(_FLOATS)
                except (TypeError, ValueError):
                    pass
            continue
        count = rng.choice([0, 1, 3, 200]) if field.is_repeated else 1
        values = [_value(field, rng) for _ in range(count)]
        if field.is_repeated:
            container = getattr(message, field.name)
            for value in values:
                if field.message_type is not None:
                    _fill(container.add(), rng, depth + 1)
                else:
                    try:
                        container.append(value)
                    except (TypeError, ValueError):
                        pass
        elif field.message_type is not None:
            if depth < 3:
                _fill(getattr(message, field.name), rng, depth + 1)
        else:
            try:
                setattr(message, field.name, values[0])
            except (TypeError, ValueError):
                pass


def _value(field, rng: random.Random):
    kinds = field.type
    if kinds == field.TYPE_STRING:
        return rng.choice([_random_text(rng), "0" * 64, "f" * 64, "secdood_base", "float"])
    if kinds == field.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 100, 5000]))
    if kinds in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return rng.choice(_FLOATS)
    if kinds == field.TYPE_BOOL:
        return rng.random() < 0.5
    if kinds in (field.TYPE_UINT32, field.TYPE_UINT64):
        return rng.choice([0, 1, 7, 2**32 - 1, 10**9])
    return rng.choice(_INTS)


def _raw_payload(message_type, rng: random.Random) -> bytes:
    """Random bytes, a truncated valid message, or a random-valued valid message."""
    kind = rng.randrange(3)
    if kind == 0:
        return rng.randbytes(rng.choice([0, 1, 7, 100, 4096]))
    message = message_type()
    _fill(message, rng)
    data = message.SerializeToString()
    if kind == 1 and data:
        return data[: rng.randrange(len(data))] + rng.randbytes(rng.randrange(4))
    return data


def _call(channel, name: str, payload_type, streaming_in: bool, streaming_out: bool, rng, meta):
    method = f"/secdood.v1.DeviceGateway/{name}"
    identity = lambda data: data  # noqa: E731 - raw bytes on the wire
    if streaming_in:
        call = channel.stream_unary(method, request_serializer=identity)
        chunks = [_raw_payload(payload_type, rng) for _ in range(rng.choice([0, 1, 3, 20]))]
        return call(iter(chunks), metadata=meta, timeout=10)
    if streaming_out:
        call = channel.unary_stream(method, request_serializer=identity)
        return list(call(_raw_payload(payload_type, rng), metadata=meta, timeout=10))
    call = channel.unary_unary(method, request_serializer=identity)
    return call(_raw_payload(payload_type, rng), metadata=meta, timeout=10)


def _random_upload(stub, rng: random.Random, meta) -> None:
    """A random byte stream framed like a real upload (valid or lying sha256 / size)."""
    payload = rng.randbytes(rng.choice([1, 1000, 300_000]))
    sha = hashlib.sha256(payload).hexdigest() if rng.random() < 0.7 else rng.randbytes(32).hex()
    total = len(payload) if rng.random() < 0.7 else rng.choice([1, len(payload) + 5, 2**40])
    size = rng.choice([1000, 65536, 1 << 20])
    chunks = [gateway_pb2.ContextChunk(sha256=sha, total_bytes=total, data=payload[:size])]
    chunks += [
        gateway_pb2.ContextChunk(data=payload[start : start + size])
        for start in range(size, len(payload), size)
    ]
    stub.UploadContext(iter(chunks), metadata=meta, timeout=10)


def _fuzz(gateway, device, enrol_metadata, cases: int, seed: int) -> Counter:
    rng = random.Random(seed)
    seen: Counter = Counter()
    credentials = {"none": (), "token": device.metadata, "enrol": enrol_metadata}
    with grpc.insecure_channel(gateway.target) as channel:
        stub = gateway_pb2_grpc.DeviceGatewayStub(channel)
        for name, (payload_type, streaming_in, streaming_out) in RPCS.items():
            for _ in range(cases):
                meta = credentials[rng.choice(["none", "token", "token", "token", "enrol"])]
                try:
                    _call(channel, name, payload_type, streaming_in, streaming_out, rng, meta)
                    seen["OK"] += 1
                except grpc.RpcError as error:
                    assert error.code() not in CRASHES, (name, error.code(), error.details())
                    assert error.code() != grpc.StatusCode.DEADLINE_EXCEEDED, name
                    seen[error.code().name] += 1
        for _ in range(cases):
            try:
                _random_upload(stub, rng, device.metadata)
                seen["OK"] += 1
            except grpc.RpcError as error:
                assert error.code() not in CRASHES, ("upload", error.code(), error.details())
                seen[error.code().name] += 1
        # Still up: health answers and a real enrolment works.
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        stub.Enroll(gateway_pb2.EnrollRequest(name="after-fuzz"), metadata=enrol_metadata)
    return seen


@pytest.fixture
def registered_hypernet(registry, gateway, device, ckks_contexts):
    """H registered and the device's public context uploaded, so Personalize reaches HE code."""
    buffer = io.BytesIO()
    torch.save(hypernet_state(make_hypernet(8, 3, seed=1)), buffer)
    registry.register_model("hypernetwork", "hypernetwork", {}, {}, buffer.getvalue())
    with GatewayClient(gateway.target, token=device.token) as client:
        client.upload_context(ckks_contexts["public"])


def test_random_and_malformed_messages_always_get_a_status(
    registered_hypernet, gateway, device, enrol_metadata
):
    seen = _fuzz(gateway, device, enrol_metadata, CASES, seed=14)
    print(f"gRPC fuzz: {sum(seen.values())} calls {dict(seen)}")
    assert sum(seen.values()) == CASES * (len(RPCS) + 1)
    assert seen["INVALID_ARGUMENT"] > 0 and seen["UNAUTHENTICATED"] > 0


@pytest.mark.slow
def test_long_grpc_fuzz(registered_hypernet, gateway, device, enrol_metadata):
    seen = _fuzz(gateway, device, enrol_metadata, SLOW_CASES, seed=random.randrange(2**32))
    print(f"gRPC fuzz (long): {sum(seen.values())} calls {dict(seen)}")
