"""DeviceKeyring on its own: keys on disk, when the public context is (re-)uploaded, the Θ cache.

The gateway client is replaced by a recording stand-in here (the real gRPC path is
covered in test_personalize.py); everything else — CKKS keys, files — is real.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from support import SMALL_PARAMS

from device_client.gateway_client import GatewayClientError, PersonalizeReply, UploadReceipt
from device_client.keyring import DeviceKeyring, KeyringError, PersonalizationSettings
from device_client.sources import ClipSource
from device_client.state import DeviceState
from shared.data.video_io import VideoError

SERVER, DEVICE = "cloud:50051", "dev-1"


class RecordingClient:
    """Answers Personalize with the given errors first, then with a fixed Θ; records uploads."""

    def __init__(self, *errors: GatewayClientError) -> None:
        self.errors = list(errors)
        self.calls: list[str] = []

    def upload_context(self, data: bytes) -> UploadReceipt:
        self.calls.append("upload")
        return UploadReceipt("0" * 64, len(data))

    def personalize(
        self,
        alpha,
        indices,
        encrypted=None,
        plain=None,
        familiarity_sha256="",
        embedding_kind="none",
    ) -> PersonalizeReply:
        self.calls.append("personalize")
        if self.errors:
            raise self.errors.pop(0)
        return PersonalizeReply([], [0.0] * 27, "hypernetwork", 3, "ab" * 32, 8, 3, 0.0, 1, 1)


def transport(keyring: DeviceKeyring, client) -> object:
    return keyring.personalizer(client, SERVER, DEVICE, 8, 3, model_key="m v1").transport


@pytest.fixture
def keyring(tmp_path) -> DeviceKeyring:
    return DeviceKeyring(DeviceState(tmp_path / "state"), SMALL_PARAMS)


def test_upload_only_when_the_cloud_needs_it(keyring):
    lost = GatewayClientError("no context", grpc.StatusCode.FAILED_PRECONDITION)
    client = RecordingClient(lost)
    carrier = transport(keyring, client)
    assert not keyring.has_keys()  # made in memory, written only for the first upload
    carrier.personalize(0.25, [0, 1], encrypted=b"x")
    assert client.calls == ["personalize", "upload", "personalize"]
    assert keyring.has_keys() and keyring.uploaded_to(SERVER, DEVICE)

    client.calls.clear()
    transport(DeviceKeyring(keyring.state, SMALL_PARAMS), client).personalize(
        0.25, [0, 1], encrypted=b"x"
    )
    assert client.calls == ["personalize"]  # a restarted device does not upload again

    foreign = GatewayClientError(
        "INVALID_ARGUMENT: ciphertext does not parse under this device's context (...)",
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    client = RecordingClient(foreign)
    transport(keyring, client).personalize(0.25, [0, 1], encrypted=b"x")
    assert client.calls == ["personalize", "upload", "personalize"]

    refused = GatewayClientError("INVALID_ARGUMENT: alpha", grpc.StatusCode.INVALID_ARGUMENT)
    client = RecordingClient(refused)
    with pytest.raises(GatewayClientError, match="alpha"):
        transport(keyring, client).personalize(0.25, [0, 1], encrypted=b"x")
    assert client.calls == ["personalize"]  # other refusals are not retried

    client = RecordingClient(lost)
    with pytest.raises(GatewayClientError):  # plaintext mode never uploads keys
        transport(keyring, client).personalize(0.25, [0, 1], plain=[1.0, 2.0])
    assert client.calls == ["personalize"]


def test_new_keys_are_uploaded_before_the_next_request(keyring):
    client = RecordingClient(GatewayClientError("lost", grpc.StatusCode.FAILED_PRECONDITION))
    transport(keyring, client).personalize(0.25, [0], encrypted=b"x")
    old_id = keyring.key_id()
    keyring.new_keys()
    assert keyring.key_id() != old_id and keyring.upload_outdated(SERVER, DEVICE)
    client = RecordingClient()
    transport(keyring, client).personalize(0.25, [0], encrypted=b"x")
    assert client.calls == ["upload", "personalize"]
    assert keyring.key_info()["key_id"] == keyring.key_id()


def test_changed_ckks_parameters_mean_new_keys(keyring, tmp_path):
    client = RecordingClient(GatewayClientError("lost", grpc.StatusCode.FAILED_PRECONDITION))
    transport(keyring, client).personalize(0.25, [0], encrypted=b"x")
    from shared.he import CKKSParams

    other = CKKSParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(50, 25, 30), scale_bits=25)
    moved = DeviceKeyring(keyring.state, other)
    assert moved.key_id() == keyring.key_id()
    moved.context()
    assert moved.key_id() != keyring.key_id() and moved.upload_outdated(SERVER, DEVICE)


def test_theta_cache_is_restored_only_for_the_same_model_and_settings(keyring):
    plain = PersonalizationSettings(encrypted=False)  # the stand-in cloud answers in plaintext

    def build(client, model_key="m v1", settings=plain):
        return keyring.personalizer(client, SERVER, DEVICE, 8, 3, model_key, settings=settings)

    personalizer = build(RecordingClient())
    personalizer.observe(np.random.default_rng(0).normal(size=(10, 8)))
    personalizer.refresh("test")
    restored = build(None)
    assert restored.theta_status == "cached" and restored.hypernet.version == 3
    assert np.array_equal(restored.theta, personalizer.theta)
    assert build(None, model_key="m v2").theta is None
    assert build(None, settings=PersonalizationSettings(alpha=0.5, encrypted=False)).theta is None
    assert keyring.last_refresh()["reason"] == "test"
    assert not keyring.has_keys()  # plaintext mode makes no keys


def test_damaged_files_are_clear_errors_and_left_alone(keyring):
    keyring.context()
    keyring.save_keys()
    keyring.secret_path.write_bytes(b"not a key")
    with pytest.raises(KeyringError, match="damaged.*--new-keys"):
        DeviceKeyring(keyring.state, SMALL_PARAMS).context()
    assert keyring.secret_path.read_bytes() == b"not a key"
    keyring.secret_path.chmod(0o644)
    with pytest.raises(KeyringError, match="chmod 600"):
        DeviceKeyring(keyring.state, SMALL_PARAMS).context()
    (keyring.state.root / "theta.json").write_text("{broken")
    with pytest.raises(KeyringError, match="theta.json is damaged"):
        keyring.cached_theta()


class ClosedCamera:
    def isOpened(self) -> bool:  # noqa: N802  (OpenCV's name)
        return False

    def release(self) -> None:
        pass


def test_a_missing_camera_fails_at_check_before_any_output(tmp_path, monkeypatch, capsys):
    from support import make_tiny_bundle

    import device_client.sources as sources
    from device_client.cli import main
    from shared.models.checkpoint import save_bundle

    source = ClipSource("camera:5", 8, 32, capture_factory=lambda index: ClosedCamera())
    with pytest.raises(VideoError, match="camera 5 could not be opened"):
        source.check()
    monkeypatch.setenv("SECDOOD_DEVICE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(sources.cv2, "VideoCapture", lambda index: ClosedCamera())
    model = save_bundle(make_tiny_bundle(), tmp_path / "model.pt")
    assert main(["run", "--source", "camera:0", "--model", str(model)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        "secdood-device: error: camera 0 could not be opened (no such camera, or it is busy)"
    ]
