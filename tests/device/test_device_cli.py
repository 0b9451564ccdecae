"""``secdood-device`` against a real gateway on loopback: enrol, download, run, and user errors."""

from __future__ import annotations

import hashlib
import json
import socket
import stat

import numpy as np
import pytest

from device_client.cli import main
from device_client.state import DeviceState
from server.gateway import build_grpc_server
from server.settings import Settings
from shared.data.video_io import iter_clips, write_video
from shared.models.checkpoint import load_bundle
from shared.pipeline import OODPipeline

ENROLLMENT_KEY = "device-test-key"


@pytest.fixture
def server_target(registry, tmp_path):
    settings = Settings(
        data_dir=tmp_path, grpc_port=0, enrollment_key=ENROLLMENT_KEY, token_ttl_seconds=600
    )
    server, port, _health = build_grpc_server(registry, settings)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None).wait()


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    folder = tmp_path / "device-state"
    monkeypatch.setenv("SECDOOD_DEVICE_DIR", str(folder))
    return folder


@pytest.fixture
def video(tmp_path):
    """A 3-clip mp4 (24 frames of 32x32) with a bright square moving over noise."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 60, size=(24, 32, 32, 3), dtype=np.uint8)
    for t in range(24):
        frames[t, 10:18, t : t + 8] = 230
    return write_video(tmp_path / "clip.mp4", frames)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_enroll_download_and_run(server_target, state_dir, video, registry, capsys):
    code = main(
        [
            "enroll", "--server", server_target, "--enrollment-key", ENROLLMENT_KEY,
            "--name", "cam-1", "--corruption", "fog", "--severity", "3",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    [device] = registry.list_devices()
    assert (device.name, device.profile["corruption"], device.profile["severity"]) == (
        "cam-1",
        "fog",
        3,
    )
    state = DeviceState()  # found through $SECDOOD_DEVICE_DIR
    assert state.root == state_dir
    identity = state.load_identity()
    assert (identity.device_id, identity.server) == (device.id, server_target)
    assert stat.S_IMODE(state.token_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert registry.authenticate_device(state.load_token()).id == device.id

    assert main(["download"]) == 0, capsys.readouterr().err
    record = registry.latest_model("secdood_base")
    model_file = state.model_path("secdood_base", "float")
    assert hashlib.sha256(model_file.read_bytes()).hexdigest() == record.artifact_sha256
    assert state.load_model_info("secdood_base", "float")["sha256"] == record.artifact_sha256
    capsys.readouterr()

    assert main(["run", "--source", str(video), "--detector", "energy", "--report"]) == 0
    out = capsys.readouterr().out.splitlines()
    # Independent computation: the same model and clips through the pipeline directly.
    pipeline = OODPipeline(load_bundle(model_file))
    clips = np.stack(list(iter_clips(video, n_frames=8, size=32)))
    verdicts = pipeline.score_clips(clips, detector="energy")
    rows = [line.split() for line in out[1:-2]]
    assert len(rows) == len(clips) == 3
    for index, row in enumerate(rows):
        assert row == [
            str(index),
            verdicts.labels[index],
            f"{verdicts.ood_score[index].item():.4f}",
            "OOD" if verdicts.is_ood[index] else "ID",
            "global",
        ]
    n_ood = int(verdicts.is_ood.sum())
    assert out[-2].startswith(f"summary: 3 clips, {n_ood} OOD")
    assert out[-1] == "telemetry reported"
    [report] = registry.list_telemetry(device.id)
    assert (report.payload["clips_scored"], report.payload["ood_flagged"]) == (3, n_ood)
    assert report.payload["model_sha256"] == record.artifact_sha256


def _expect_user_error(argv: list[str], capsys, message: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert len(captured.err.strip().splitlines()) == 1


def test_user_errors_are_one_line_with_exit_code_2(state_dir, tmp_path, video, capsys):
    _expect_user_error(["download"], capsys, "not enrolled")
    _expect_user_error(
        ["run", "--source", str(tmp_path / "missing.mp4")], capsys, "video file not found"
    )
    _expect_user_error(["run", "--source", str(video)], capsys, "secdood-device download")
    target = f"127.0.0.1:{_free_port()}"
    _expect_user_error(
        ["enroll", "--server", target, "--enrollment-key", "k", "--name", "cam"],
        capsys,
        "unreachable",
    )
    _expect_user_error(
        ["enroll", "--server", target, "--enrollment-key", "k", "--name", "cam", "--severity", "2"],
        capsys,
        "--corruption and --severity together",
    )
    assert not (state_dir / "token").exists()


def test_unreadable_video_and_refused_enrolment(server_target, state_dir, tmp_path, capsys):
    _expect_user_error(
        ["enroll", "--server", server_target, "--enrollment-key", "wrong", "--name", "cam"],
        capsys,
        "UNAUTHENTICATED: invalid enrollment key",
    )
    assert not DeviceState().is_enrolled()
    argv = ["enroll", "--server", server_target, "--enrollment-key", ENROLLMENT_KEY]
    assert main([*argv, "--name", "cam"]) == 0
    assert main(["download"]) == 0
    capsys.readouterr()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 50)
    _expect_user_error(["run", "--source", str(garbage)], capsys, "garbage.mp4")
    _expect_user_error(
        ["run", "--source", str(garbage), "--detector", "nope"], capsys, "unknown detector"
    )


def test_state_files_are_plain_json_and_a_damaged_identity_is_not_enrolled(state_dir, capsys):
    state = DeviceState()
    state.ensure_dirs()
    state.token_path.write_text("tok")
    state.identity_path.write_text("{not json")
    _expect_user_error(["download"], capsys, "damaged")
    state.identity_path.write_text(json.dumps({"server": "h:1"}))
    _expect_user_error(["download"], capsys, "damaged")


def test_every_run_option_is_explained(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for phrase in ("OpenCV camera N", "OOD score: energy", "test-time adaptation", "personalised"):
        assert phrase in out, phrase
