"""Encrypted personalisation evaluated in worker processes (``Settings.he_workers``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from device_client.gateway_client import GatewayClient, GatewayClientError
from server.gateway import build_grpc_server
from server.personalization import DEFAULT_HYPERNET
from server.registry import open_registry
from server.settings import Settings
from shared.he import decrypt_theta, encrypt_selected, public_context_bytes
from shared.hypernet import HyperNetwork, HyperNetworkConfig, hypernet_state

KEY = "enrol-key"


def test_workers_serve_several_devices_and_keep_refusing_bad_input(tmp_path, small_context):
    torch.manual_seed(0)
    hypernet = HyperNetwork(HyperNetworkConfig(8, 3)).eval()
    a, c = (t.numpy() for t in hypernet.affine_map())
    buffer = io.BytesIO()
    torch.save(hypernet_state(hypernet), buffer)
    with open_registry(None, tmp_path) as registry:
        registry.register_model(DEFAULT_HYPERNET, DEFAULT_HYPERNET, {}, {}, buffer.getvalue())
        settings = Settings(
            data_dir=tmp_path, host="127.0.0.1", grpc_port=0, enrollment_key=KEY, he_workers=2
        )
        server, port, _ = build_grpc_server(registry, settings)
        server.start()
        try:
            indices = np.arange(4)
            z = np.random.default_rng(0).uniform(0, 2, size=8)
            for device in range(3):  # three devices over two workers
                with GatewayClient(f"127.0.0.1:{port}") as client:
                    client.enroll(KEY, f"cam-{device}")
                    client.upload_context(public_context_bytes(small_context))
                    for _ in range(2):  # the second request reuses the encoded rows
                        data = encrypt_selected(small_context, z, indices)
                        reply = client.personalize(0.5, indices.tolist(), encrypted=data)
                        theta = decrypt_theta(small_context, reply.theta_ciphertexts, c.size)
                        assert np.abs(theta - (z[indices] @ a[indices] + c)).max() < 1e-2
                    with pytest.raises(GatewayClientError, match="does not parse"):
                        client.personalize(0.5, indices.tolist(), encrypted=data[:100])
                    with pytest.raises(GatewayClientError, match="holds 4 values"):
                        client.personalize(0.75, list(range(6)), encrypted=data)
        finally:
            server.stop(grace=None).wait()
