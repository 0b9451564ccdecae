"""Personalize over a real gRPC gateway on loopback: round trips, refusals, no secret key."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import torch
from support import make_hypernet

from device_client.gateway_client import GatewayClient, GatewayClientError
from device_client.personalization import Personalizer
from server.gateway import build_grpc_server
from server.gateway.auth import TOKEN_METADATA
from server.registry import open_registry
from server.settings import Settings
from shared.embedding_adaptation import EmbeddingAdaptation
from shared.familiarity import FamiliarityReference, familiarity_reference
from shared.he import encrypt_selected, load_public_context, public_context_bytes
from shared.hypernet import hypernet_state, personalised_logits
from shared.rpc import gateway_pb2, gateway_pb2_grpc

KEY = "enrol-key"
D, C = 8, 3


@pytest.fixture
def hypernet():
    return make_hypernet(D, C, seed=4)


@pytest.fixture
def gateway(tmp_path, hypernet):
    yield from _serve(tmp_path, hypernet)


def _serve(tmp_path, hypernet):
    """A registry holding ``hypernet`` behind a real gRPC gateway on loopback."""
    buffer = io.BytesIO()
    torch.save(hypernet_state(hypernet), buffer)
    with open_registry(None, tmp_path) as registry:
        registry.register_model("hypernetwork", "hypernetwork", {}, {}, buffer.getvalue())
        settings = Settings(
            data_dir=tmp_path,
            host="127.0.0.1",
            grpc_port=0,
            enrollment_key=KEY,
            token_ttl_seconds=3600,
            max_upload_bytes=64 * 1024 * 1024,
        )
        server, port, _ = build_grpc_server(registry, settings)
        server.start()
        try:
            yield registry, f"127.0.0.1:{port}"
        finally:
            server.stop(grace=None).wait()


def _state(registry):
    devices = registry.list_devices()
    files = sorted(p.name for p in registry.artifacts.root.rglob("*") if p.is_file())
    return len(devices), [len(registry.list_contexts(d.id)) for d in devices], files


def _expected_logits(hypernet, z, indices):
    mask = np.zeros(D)
    mask[indices] = 1
    with torch.no_grad():
        theta = hypernet.theta(torch.from_numpy(z * mask).float()).double()
    return personalised_logits(torch.from_numpy(z), theta, C)


def test_encrypted_and_plain_round_trips(gateway, hypernet, small_context):
    registry, target = gateway
    rng = np.random.default_rng(0)
    z = rng.uniform(0, 2, size=(6, D))
    with GatewayClient(target) as client:
        client.enroll(KEY, "cam")
        client.upload_context(public_context_bytes(small_context))
        stored = registry.current_context(registry.list_devices()[0].id)
        assert stored.is_public
        server_copy = load_public_context(registry.artifacts.read_bytes(stored.artifact_sha256))
        assert not server_copy.is_private()

        encrypted = Personalizer(client, D, C, small_context, alpha=0.5, mode="per_sample")
        plain = Personalizer(client, D, C, None, alpha=0.5, mode="per_sample")
        for personalizer in (encrypted, plain):
            personalizer.observe(z)
        indices = encrypted.selector.select()
        expected = _expected_logits(hypernet, z, indices)
        got_encrypted, got_plain = encrypted.logits(z), plain.logits(z)
        assert float((got_encrypted - expected).abs().max()) < 2e-2  # N = 4096, 29-bit scale
        assert float((got_plain - expected).abs().max()) < 1e-5  # float32 module vs float64 map
        assert (
            encrypted.stats.requests == 6 and encrypted.stats.bytes_up > 10 * plain.stats.bytes_up
        )

        device = Personalizer(client, D, C, small_context, alpha=0.5, mode="per_device")
        device.observe(z)
        logits = device.logits(z)
        mean_theta = _expected_logits(hypernet, z.mean(0, keepdims=True), indices)
        assert device.refreshes == 1 and device.theta is not None
        assert (
            float(
                (
                    logits[:1]
                    - personalised_logits(
                        torch.from_numpy(z[:1]), torch.from_numpy(device.theta), C
                    )
                )
                .abs()
                .max()
            )
            < 1e-9
        )
        assert mean_theta.shape == (1, C)
        device.logits(z)  # same window: no drift, no new request
        assert device.refreshes == 1 and device.stats.requests == 1


def _request(indices, alpha, data=None, sha=None, plain=None):
    request = gateway_pb2.PersonalizeRequest(alpha=alpha, indices=indices)
    if plain is not None:
        request.plain.values.extend(plain)
    else:
        request.encrypted = data
        import hashlib

        request.encrypted_sha256 = sha if sha is not None else hashlib.sha256(data).hexdigest()
    return request


def test_refusals_are_clear_and_leave_state_unchanged(gateway, small_context, default_context):
    registry, target = gateway
    client = GatewayClient(target)
    client.enroll(KEY, "cam")
    # A raw stub sends requests the client never would (same channel kind, the device's token).
    stub = gateway_pb2_grpc.DeviceGatewayStub(grpc.insecure_channel(target))
    metadata = ((TOKEN_METADATA, f"Bearer {client.token}"),)

    def code_of(request):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Personalize(request, metadata=metadata)
        return caught.value.code(), caught.value.details()

    good = encrypt_selected(small_context, np.arange(D, dtype=float), np.arange(4))
    code, details = code_of(_request([0, 1, 2, 3], 0.5, good))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "upload your public context" in details
    client.upload_context(public_context_bytes(small_context))
    before = _state(registry)
    cases = [
        (_request([0, 1, 2, 3], 0.5, good, sha="0" * 64), "tampered"),
        (_request([0, 1, 2, 3], 0.5, good[: len(good) // 2]), "does not parse"),
        (
            _request(
                [0, 1, 2, 3], 0.5, encrypt_selected(default_context, np.ones(4), np.arange(4))
            ),
            "does not parse",
        ),
        (_request([0, 1, 2, 9], 0.5, good), r"[0, 8)"),
        (_request([0, 1, 1, 3], 0.5, good), "strictly increasing"),
        (_request([0, 1, 2, 3], 0.0, good), "(0, 1]"),
        (_request([0, 1, 2, 3], 1.5, good), "(0, 1]"),
        (_request([0, 1, 2], 0.5, good), "selects 4"),
        (_request([0, 1, 2, 3, 4, 5], 0.75, good), "holds 4 values"),
        (_request([0, 1, 2, 3], 0.5, plain=[1.0, 2.0]), "must hold 4"),
    ]
    for request, message in cases:
        code, details = code_of(request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (message, details)
        assert message in details
    code, _ = code_of(gateway_pb2.PersonalizeRequest(alpha=0.5, indices=[0, 1, 2, 3]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert _state(registry) == before
    with pytest.raises(GatewayClientError, match="INVALID_ARGUMENT"):
        client.personalize(0.5, [0, 1, 2, 3], plain=[1.0])
    client.close()


def test_the_familiarity_reference_travels_once(tmp_path):
    hypernet = make_hypernet(D, C, seed=5)
    rng = np.random.default_rng(3)
    hypernet.familiarity = familiarity_reference(rng.normal(size=(12, D)))
    serving = _serve(tmp_path, hypernet)
    _, target = next(serving)
    try:
        with GatewayClient(target) as client:
            client.enroll(KEY, "cam")
            first = client.personalize(0.5, [0, 2, 4, 6], plain=[0.1, 0.2, 0.3, 0.4])
            sha = hypernet.familiarity.sha256
            assert first.familiarity_sha256 == sha
            assert FamiliarityReference.from_bytes(first.familiarity).sha256 == sha
            again = client.personalize(
                0.5, [0, 2, 4, 6], plain=[0.1, 0.2, 0.3, 0.4], familiarity_sha256=sha
            )
            assert again.familiarity_sha256 == sha and again.familiarity == b""
            assert again.bytes_down < first.bytes_down - 12 * D * 4
            assert again.theta_plain == first.theta_plain
            # the device's Personalizer keeps it and names it at its next request
            device = Personalizer(client, D, C, None, alpha=0.5, window=16, min_window=2)
            device.observe(rng.uniform(0, 2, size=(8, D)))
            device.refresh("test")
            assert device.familiarity is not None and device.familiarity.sha256 == sha
            device.refresh("test")
            assert device.familiarity is not None and device.stats.requests == 2
    finally:
        next(serving, None)


def test_requests_must_send_the_embeddings_h_reads(tmp_path):
    hypernet = make_hypernet(D, C, seed=6)
    hypernet.embedding = EmbeddingAdaptation(mode="leantta", layers=2, tau=0.5, lam=0.0)
    serving = _serve(tmp_path, hypernet)
    registry, target = next(serving)
    try:
        with GatewayClient(target) as client:
            client.enroll(KEY, "cam")
            before = _state(registry)
            for sent in ("", "none", "leantta:3:0.5:0"):  # plain (older devices) or another kind
                with pytest.raises(GatewayClientError, match="INVALID_ARGUMENT") as refused:
                    client.personalize(0.5, [0, 2, 4, 6], plain=[0.1] * 4, embedding_kind=sent)
                assert "leantta:2:0.5:0" in str(refused.value)  # says which kind H reads
            with pytest.raises(GatewayClientError, match="INVALID_ARGUMENT"):
                client.personalize(0.5, [0, 2, 4, 6], plain=[0.1] * 4, embedding_kind="leantta:x")
            assert _state(registry) == before
            reply = client.personalize(
                0.5, [0, 2, 4, 6], plain=[0.1] * 4, embedding_kind=hypernet.embedding.key
            )
            assert reply.embedding_kind == "leantta:2:0.5:0" and len(reply.theta_plain) == D * C + C
            # the device's Personalizer names its kind in every request
            device = Personalizer(
                client, D, C, None, alpha=0.5, window=16, min_window=2,
                embedding_kind=hypernet.embedding.key,
            )  # fmt: skip
            device.observe(np.random.default_rng(1).uniform(0, 2, size=(8, D)))
            device.refresh("test")
            assert device.stats.requests == 1
    finally:
        next(serving, None)
