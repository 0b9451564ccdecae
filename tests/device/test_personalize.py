"""``secdood-device personalize`` / ``run --personalize`` / ``status`` against a real gateway.

Real CKKS (a small ring for speed), a real gRPC server on loopback and a real
registry; the HyperNetwork is a small random one (plumbing, not accuracy).
"""

from __future__ import annotations

import io
import json
import re
import stat

import grpc
import numpy as np
import pytest
import tenseal
import torch
from support import SMALL_PARAMS, make_hypernet

import device_client.keyring as keyring_module
from device_client.channel_selection import select_channels
from device_client.cli import main
from device_client.head_guard import CONFIDENCE_SLACK, GUARD_SIGNAL, SIGNALS
from device_client.head_refinement import MIN_WINDOW
from device_client.keyring import DeviceKeyring
from device_client.personalization import THRESHOLD_QUANTILE
from device_client.simulated_camera import truth_path
from device_client.state import DeviceState
from server.gateway import build_grpc_server
from server.settings import Settings
from shared.data.video_io import iter_clips, write_video
from shared.embedding_adaptation import DEFAULT as DEFAULT_EMBEDDING
from shared.embedding_adaptation import adapted_model
from shared.hypernet import hypernet_state, personalised_logits
from shared.model_names import BASE_MODEL, HYPERNETWORK
from shared.models.checkpoint import load_bundle
from shared.ood.energy import energy
from shared.pipeline import OODPipeline

KEY = "personalize-test-key"
D, C = 8, 3  # the tiny bundle's embedding size and classes


class Gateway:
    """A gRPC gateway over ``registry`` that can be stopped and started again on its port."""

    def __init__(self, registry, data_dir) -> None:
        self.registry = registry
        self.settings = Settings(
            data_dir=data_dir, grpc_port=0, enrollment_key=KEY, max_upload_bytes=64 << 20
        )
        self.server = None
        self.port = 0

    def start(self) -> Gateway:
        settings = self.settings.model_copy(update={"grpc_port": self.port})
        self.server, self.port, _ = build_grpc_server(self.registry, settings)
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None).wait()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def small_keys(monkeypatch):
    """New device keys use the small test ring (N = 4096) instead of the product's N = 8192."""
    monkeypatch.setattr(keyring_module, "DEFAULT_PARAMS", SMALL_PARAMS)


@pytest.fixture
def hypernet():
    hypernet = make_hypernet(D, C, seed=4)
    hypernet.embedding = DEFAULT_EMBEDDING  # as the server's H job trains it
    return hypernet


def register_hypernet(registry, hypernet) -> None:
    buffer = io.BytesIO()
    torch.save(hypernet_state(hypernet), buffer)
    registry.register_model(HYPERNETWORK, HYPERNETWORK, {}, {}, buffer.getvalue())


@pytest.fixture
def gateway(registry, tmp_path):
    gateway = Gateway(registry, tmp_path).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def state(tmp_path, monkeypatch) -> DeviceState:
    folder = tmp_path / "device-state"
    monkeypatch.setenv("SECDOOD_DEVICE_DIR", str(folder))
    return DeviceState(folder)


@pytest.fixture
def video(tmp_path):
    """20 clips of 8 frames (32x32): a bright square moving over noise."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 60, size=(160, 32, 32, 3), dtype=np.uint8)
    for t in range(160):
        frames[t, 10:18, t % 24 : t % 24 + 8] = 230
    return write_video(tmp_path / "camera.mp4", frames)


def enroll_and_download(target: str, capsys) -> None:
    argv = ["enroll", "--server", target, "--enrollment-key", KEY, "--name", "cam"]
    assert main(argv) == 0
    assert main(["download"]) == 0
    capsys.readouterr()


def json_tail(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def mode_of(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_personalize_then_score_offline_from_the_cache_and_recover(
    gateway, registry, hypernet, state, video, small_keys, capsys
):
    register_hypernet(registry, hypernet)
    enroll_and_download(gateway.target, capsys)

    assert main(["personalize", "--source", str(video), "--clips", "20"]) == 0
    out = capsys.readouterr().out
    assert "before (global head)" in out and "after (personalised)" in out
    assert f"theta: {HYPERNETWORK} v1" in out and "uploaded now" in out
    assert f"embeddings: {DEFAULT_EMBEDDING.describe()}" in out  # what H was trained on
    # 20 clips are too few to refine Θ on (device_client.head_refinement.MIN_WINDOW)
    assert f"refinement: not yet (20 window clips, needs {MIN_WINDOW})" in out
    keyring = DeviceKeyring(state)
    assert mode_of(keyring.secret_path) == 0o600 and mode_of(keyring.he_dir) == 0o700
    assert mode_of(state.root / keyring_module.THETA_FILE) == 0o600
    device = registry.list_devices()[0]
    assert registry.current_context(device.id).is_public

    # The cached Θ is H on the importance-selected channels of the window mean.
    bundle = load_bundle(state.model_path(BASE_MODEL, "float"))
    bundle.model = adapted_model(bundle.model, DEFAULT_EMBEDDING)  # what the device sends
    clips = np.stack(list(iter_clips(video, n_frames=8, size=32)))
    z = OODPipeline(bundle).embed_clips(clips).double().numpy()
    indices = select_channels(z, 0.25)
    mask = np.zeros(D)
    mask[indices] = 1.0
    with torch.no_grad():
        expected = hypernet.theta(torch.from_numpy(z.mean(0) * mask).float()[None])[0].double()
    cached = keyring.cached_theta()
    assert cached is not None and cached.snapshot.hypernet.version == 1
    assert np.array_equal(cached.snapshot.indices, indices)
    assert float(np.abs(cached.snapshot.theta - expected.numpy()).max()) < 2e-2
    # personalize also says what the run loop's guard makes of this Θ on this window
    fused = bundle.model.fused_head
    with torch.no_grad():
        global_logits = torch.from_numpy(z) @ fused.weight.double().T + fused.bias.double()
    personal = personalised_logits(torch.from_numpy(z), torch.from_numpy(cached.snapshot.theta), C)
    signal = GUARD_SIGNAL if len(z) >= C else "msp"
    score_p, score_g = (SIGNALS[signal](x) for x in (personal, global_logits))
    verdict = (
        "keeps the personalised" if score_p >= score_g - CONFIDENCE_SLACK else "would serve the"
    )
    assert f"guard: {verdict}" in out
    shown = re.search(rf"{signal} on the window ([0-9.]+) personalised vs ([0-9.]+) global", out)
    assert shown is not None
    assert [float(x) for x in shown.groups()] == pytest.approx([score_p, score_g], abs=2e-3)
    # Θ carries its Energy-threshold offset: the quantile of the window's Energy under Θ
    # minus the same quantile of the global head's Energy on the model's clean reference
    quantiles = [
        float(np.quantile(energy(x).numpy(), THRESHOLD_QUANTILE))
        for x in (personal, bundle.reference_logits.double())
    ]
    offset = cached.snapshot.energy_offset
    assert offset == pytest.approx(quantiles[0] - quantiles[1], abs=1e-3)
    base = bundle.thresholds["energy"]
    if verdict.startswith("keeps"):
        assert f"threshold: energy {base + offset:.4f} for the personalised head" in out
    else:
        assert f"threshold: energy {base:.4f}, the model's" in out

    # Cloud down: a restarted device scores personalised from its cache and says it is stale.
    gateway.stop()
    assert (
        main(
            ["run", "--source", str(video), "--personalize", "--json", "--quiet", "--window", "16"]
        )
        == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    rows = [line.split() for line in out[1:-2]]
    assert len(rows) == 20
    assert all(" ".join(row[4:]) == "personal(v1 stale)" for row in rows)
    report = json.loads(out[-1])
    assert report["head"] == "personalised" and report["clips"] == 20
    assert report["stale"] is True and report["theta_status"] == "stale"
    logits = personalised_logits(
        torch.from_numpy(z), torch.from_numpy(cached.snapshot.theta), C
    ).float()
    scores = energy(logits).numpy()
    assert [float(row[2]) for row in rows] == pytest.approx(scores.tolist(), abs=2e-4)
    # the personalised scores above mean the guard kept Θ: its verdicts use the model's
    # Energy threshold plus Θ's offset
    assert report["guard"]["fallback_clips"] == 0 and report["energy_offset"] == offset
    threshold = base + offset
    assert report["last_threshold"] == pytest.approx(threshold, abs=1e-6)
    assert [row[3] == "OOD" for row in rows] == [bool(x > threshold) for x in scores]
    assert main(["status"]) == 0
    status = capsys.readouterr().out
    assert "theta:        hypernetwork v1" in status and "failed" in status
    assert f"Energy threshold of the model {offset:+.4f} for this theta" in status

    # Cloud back on the same address: the next run refreshes Θ by itself.
    gateway.start()
    assert (
        main(
            ["run", "--source", str(video), "--personalize", "--json", "--quiet", "--window", "16"]
        )
        == 0
    )
    report = json_tail(capsys.readouterr().out)
    assert report["stale"] is False and report["theta_status"] == "fresh"
    assert report["refined"] is False  # a 16-clip window: too few to refine on
    assert report["refreshes"] == 1
    guard = report["guard"]  # the run loop's guard checked the refreshed Θ on its window
    assert guard["confidence_slack"] == CONFIDENCE_SLACK and guard["trusted"] is not None
    assert 0 <= guard["fallback_clips"] <= report["clips"]
    refreshed = keyring.cached_theta()
    assert refreshed.snapshot.refreshed_at > cached.snapshot.refreshed_at
    assert refreshed.snapshot.reason.startswith("restart")
    assert len(registry.list_contexts(device.id)) == 1  # uploaded once


class SentBytes(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
):
    """A gRPC client interceptor that keeps every byte the device sends (messages + metadata)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def _keep(self, details, request) -> None:
        metadata = b"".join(
            f"{k}={v}".encode() if isinstance(v, str) else v for k, v in details.metadata or ()
        )
        self.messages.append((details.method, request.SerializeToString() + metadata))

    def intercept_unary_unary(self, continuation, details, request):
        self._keep(details, request)
        return continuation(details, request)

    def intercept_unary_stream(self, continuation, details, request):
        self._keep(details, request)
        return continuation(details, request)

    def intercept_stream_unary(self, continuation, details, requests):
        def spy():
            for request in requests:
                self._keep(details, request)
                yield request

        return continuation(details, spy())

    def everything(self) -> bytes:
        return b"".join(data for _, data in self.messages)


def secret_key_probes(context, tmp_path) -> list[bytes]:
    """Slices of the secret key as SEAL saves it and of its raw coefficients."""
    saved = tmp_path / "sk.seal"
    context.secret_key().data.save(str(saved))
    blob = saved.read_bytes()
    polynomial = context.secret_key().data.data()
    coefficients = np.array(
        [polynomial.data(i) for i in range(polynomial.coeff_count())], dtype=np.uint64
    ).tobytes()
    probes = [blob[i : i + 48] for i in range(64, len(blob) - 48, max(1, len(blob) // 16))]
    probes += [coefficients[i : i + 64] for i in range(0, len(coefficients) - 64, 8192)]
    return probes


def test_the_secret_key_never_leaves_the_device(
    gateway, registry, hypernet, state, small_keys, tmp_path
):
    from device_client.gateway_client import GatewayClient

    register_hypernet(registry, hypernet)
    spy = SentBytes()
    with GatewayClient(gateway.target, interceptors=[spy]) as client:
        enrolment = client.enroll(KEY, "cam")
        keyring = DeviceKeyring(state)
        personalizer = keyring.personalizer(
            client, gateway.target, enrolment.device_id, D, C, model_key="tiny",
            embedding_kind=hypernet.embedding.key,
        )  # fmt: skip
        z = np.random.default_rng(1).uniform(0, 2, size=(32, D))
        personalizer.logits(z)  # first refresh: FAILED_PRECONDITION → upload → retry
        client.report_telemetry(32, 3, 1.0, 8.0)
    methods = [method.rsplit("/", 1)[-1] for method, _ in spy.messages]
    assert {"Enroll", "UploadContext", "Personalize", "ReportTelemetry"} <= set(methods)
    assert methods.count("Personalize") == 2 and personalizer.transport.uploads == 1

    sent = spy.everything()
    key_file = keyring.secret_path.read_bytes()
    probes = secret_key_probes(keyring.context(), tmp_path)
    assert len(probes) > 20
    assert any(p in key_file for p in probes)  # the probes do find key material where it is
    assert not [p for p in probes if p in sent]
    assert key_file[64:128] not in sent
    uploaded = b"".join(data for method, data in spy.messages if method.endswith("UploadContext"))
    stored = registry.artifacts.read_bytes(
        registry.current_context(enrolment.device_id).artifact_sha256
    )
    assert stored[:4096] in uploaded and not tenseal.context_from(stored).is_private()
    assert mode_of(keyring.secret_path) == 0o600


def expect_error(argv, capsys, message: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err, captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err


def device_files(state: DeviceState) -> dict[str, bytes]:
    if not state.root.exists():
        return {}
    return {
        str(p.relative_to(state.root)): p.read_bytes() for p in state.root.rglob("*") if p.is_file()
    }


def test_bad_personalize_calls_are_clear_and_change_nothing(
    gateway, registry, hypernet, state, video, small_keys, capsys
):
    argv = ["personalize", "--source", str(video), "--clips", "20"]
    expect_error(argv, capsys, "not enrolled")
    assert device_files(state) == {}
    assert main(["enroll", "--server", gateway.target, "--enrollment-key", KEY, "--name", "c"]) == 0
    device = registry.list_devices()[0]
    capsys.readouterr()
    expect_error(argv, capsys, "secdood-device download")
    assert main(["download"]) == 0
    capsys.readouterr()
    before = device_files(state)
    for alpha in ("0", "1.5", "nan"):
        expect_error([*argv, "--alpha", alpha], capsys, "(0, 1]")
    expect_error(argv, capsys, "NOT_FOUND")  # the cloud has no HyperNetwork yet
    assert device_files(state) == before and registry.list_contexts(device.id) == []

    register_hypernet(registry, hypernet)
    assert main(argv) == 0
    capsys.readouterr()
    # embeddings of another kind than H reads: refused by the cloud, said plainly, nothing lost
    before = device_files(state)
    expect_error([*argv, "--adapt", "none"], capsys, "reads LeanTTA")
    run = ["run", "--source", str(video), "--personalize", "--quiet"]
    expect_error([*run, "--adapt", "zo"], capsys, "cannot run with --adapt zo")
    assert device_files(state) == before
    keyring = DeviceKeyring(state)
    keyring.secret_path.write_bytes(b"\x00garbage" * 100)
    before = device_files(state)
    expect_error(argv, capsys, "damaged")
    assert device_files(state) == before and len(registry.list_contexts(device.id)) == 1
    assert main(["status"]) == 0  # status still reads what it can
    capsys.readouterr()
    assert main([*argv, "--new-keys"]) == 0  # the documented way out
    assert len(registry.list_contexts(device.id)) == 2
    assert DeviceKeyring(state).context().is_private()


def test_run_json_reports_flag_rates_from_the_truth_file(tmp_path, video, capsys, monkeypatch):
    from support import make_tiny_bundle

    from shared.models.checkpoint import save_bundle

    monkeypatch.setenv("SECDOOD_DEVICE_DIR", str(tmp_path / "state"))
    model = save_bundle(make_tiny_bundle(), tmp_path / "model.pt")
    labels = [0, 1, -1, 2, -1] * 4
    truth_path(video).write_text(json.dumps({"clips": [{"label": x} for x in labels]}))
    assert main(["run", "--source", str(video), "--model", str(model), "--json", "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    flags = np.array([line.split()[3] == "OOD" for line in out[1:-2]])
    report = json.loads(out[-1])
    truth = np.array(labels)
    assert report["clips"] == 20 and report["head"] == "global"
    assert report["int8"] is False and report["engine"] is None
    assert report["id_flagged_rate"] == pytest.approx(flags[truth >= 0].mean())
    assert report["ood_flagged_rate"] == pytest.approx(flags[truth < 0].mean())
    assert (report["id_clips"], report["ood_clips"]) == (12, 8)


def test_plaintext_per_sample_mode_makes_no_keys(gateway, registry, hypernet, state, video, capsys):
    register_hypernet(registry, hypernet)
    enroll_and_download(gateway.target, capsys)
    argv = ["personalize", "--source", str(video), "--clips", "6", "--mode", "per_sample"]
    assert main([*argv, "--plaintext", "--alpha", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "plaintext mode" in out and "4 of 8 channels sent" in out and "per_sample" in out
    keyring = DeviceKeyring(state)
    assert not keyring.has_keys() and keyring.cached_theta() is None
    assert registry.list_contexts(registry.list_devices()[0].id) == []
    assert keyring.settings().mode == "per_sample" and not keyring.settings().encrypted
    assert main(["run", "--source", str(video), "--personalize", "--json", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert all(line.split()[-1] == "personal(v1)" for line in lines[1:-2]), lines[:3]
    assert json.loads(lines[-1])["head"] == "personalised"


def test_personalize_refines_theta_on_a_large_window_unless_told_not_to(
    gateway, registry, hypernet, state, tmp_path, capsys
):
    register_hypernet(registry, hypernet)
    enroll_and_download(gateway.target, capsys)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 60, size=(320, 32, 32, 3), dtype=np.uint8)  # 40 clips of 8
    for t in range(320):
        frames[t, (t // 8) % 20 : (t // 8) % 20 + 8, t % 24 : t % 24 + 8] = 230
    video = write_video(tmp_path / "long.mp4", frames)
    argv = ["personalize", "--source", str(video), "--clips", "40", "--plaintext"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "refinement: theta refined on 40 window clips without labels" in out
    assert DeviceKeyring(state).settings().refine is True
    assert main([*argv, "--no-refine"]) == 0
    out = capsys.readouterr().out
    assert "refinement: off (the cloud's theta is used as sent)" in out
    assert DeviceKeyring(state).settings().refine is False
    assert main(["status"]) == 0
    assert "theta used as sent" in capsys.readouterr().out
