"""Registry service: models, devices, HE contexts, jobs, telemetry and their errors."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

import server.registry.devices as registry_devices
from server.registry import (
    ArtifactIntegrityError,
    JobState,
    JobStateError,
    NotFoundError,
    Registry,
    open_registry,
)
from server.registry.tables import Base


@pytest.fixture
def registry(tmp_path: Path, db_url: str | None) -> Iterator[Registry]:
    with open_registry(db_url, tmp_path / "data") as opened:
        yield opened


def blob_files(registry: Registry) -> list[Path]:
    return sorted(path for path in registry.artifacts.root.rglob("*") if path.is_file())


def count_rows(registry: Registry, table: str) -> int:
    with registry.engine.connect() as connection:
        return connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()


# -- models ----------------------------------------------------------------------------


def test_versions_count_up_per_name(registry: Registry) -> None:
    first = registry.register_model("secdood", "secdood", {"lr": 0.1}, {"auroc": 0.9}, b"v1")
    other = registry.register_model("zil-mlp", "zil", {}, {}, b"other")
    second = registry.register_model("secdood", "secdood", {"lr": 0.2}, {"auroc": 0.95}, b"v2")
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert registry.latest_model("secdood") == second
    assert registry.get_model("secdood", version=1) == first
    assert first.artifact_sha256 == hashlib.sha256(b"v1").hexdigest()
    assert registry.artifacts.read_bytes(second.artifact_sha256) == b"v2"
    assert second.size_bytes == 2 and second.created_at.tzinfo is UTC
    assert [(m.name, m.version) for m in registry.list_models()] == [
        ("secdood", 1),
        ("secdood", 2),
        ("zil-mlp", 1),
    ]
    assert registry.list_models("zil-mlp") == [other]
    assert registry.get_model_by_id(other.id) == other


def test_variants_share_a_version(registry: Registry, tmp_path: Path) -> None:
    float_model = registry.register_model("secdood", "secdood", {}, {"acc": 0.8}, b"fp32")
    int8_file = tmp_path / "int8.bin"
    int8_file.write_bytes(b"int8 weights")
    int8_model = registry.register_model(
        "secdood", "secdood", {}, {"acc": 0.79}, int8_file, variant="int8", version=1
    )
    assert int8_model.version == float_model.version == 1
    assert registry.latest_model("secdood", variant="int8") == int8_model
    assert registry.latest_model("secdood") == float_model
    with pytest.raises(ValueError, match="already has a 'int8' variant"):
        registry.register_model("secdood", "secdood", {}, {}, b"again", variant="int8", version=1)
    with pytest.raises(NotFoundError, match="version 7 does not exist"):
        registry.register_model("secdood", "secdood", {}, {}, b"x", variant="int8", version=7)


def test_unknown_model_raises_not_found_with_the_name(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="'no-such-model'") as caught:
        registry.latest_model("no-such-model")
    assert isinstance(caught.value, KeyError) and caught.value.key == "no-such-model"
    registry.register_model("known", "secdood", {}, {}, b"w")
    with pytest.raises(NotFoundError, match="no 'int8' variant"):
        registry.latest_model("known", variant="int8")
    with pytest.raises(NotFoundError, match="version 3"):
        registry.get_model("known", version=3)


def test_records_are_frozen_copies(registry: Registry) -> None:
    model = registry.register_model("m", "secdood", {"layers": [1, 2]}, {}, b"w")
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.name = "other"  # type: ignore[misc]
    model.config["layers"].append(3)
    assert registry.latest_model("m").config == {"layers": [1, 2]}


def test_bad_model_arguments(registry: Registry) -> None:
    with pytest.raises(ValueError, match="model name must be a non-empty"):
        registry.register_model("", "secdood", {}, {}, b"w")
    with pytest.raises(TypeError, match="config must be a dict"):
        registry.register_model("m", "secdood", [1], {}, b"w")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite numbers"):
        registry.register_model("m", "secdood", {}, {"auroc": float("nan")}, b"w")
    with pytest.raises(TypeError, match="artifact must be bytes or a path"):
        registry.register_model("m", "secdood", {}, {}, 12345)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        registry.register_model("m", "secdood", {}, {}, "absent.pt")
    with pytest.raises(ValueError, match="version must be a positive int"):
        registry.register_model("m", "secdood", {}, {}, b"w", version=0)
    assert count_rows(registry, "models") == 0 and blob_files(registry) == []


def test_failed_model_insert_leaves_no_new_blob(registry: Registry) -> None:
    registry.register_model("m", "secdood", {}, {}, b"w1")
    registry.register_model("m", "secdood", {}, {}, b"w1-int8", variant="int8", version=1)
    files_before = blob_files(registry)
    with pytest.raises(ValueError, match="already has"):
        registry.register_model("m", "secdood", {}, {}, b"fresh bytes", variant="int8", version=1)
    assert blob_files(registry) == files_before  # the new blob was rolled back too
    # a blob that an existing row references survives a failed insert
    with pytest.raises(ValueError, match="already has"):
        registry.register_model("m", "secdood", {}, {}, b"w1", variant="int8", version=1)
    assert blob_files(registry) == files_before


# -- devices ---------------------------------------------------------------------------


def test_enrolled_device_authenticates_and_only_a_hash_is_stored(registry: Registry) -> None:
    device, token = registry.enroll_device("cam-1", {"corruption": "fog", "severity": 3})
    assert len(token) >= 43 and device.last_seen is None
    with registry.engine.connect() as connection:
        stored = connection.execute(text("SELECT token_hash FROM devices")).scalar_one()
        dump = "\n".join(
            repr(row)
            for table in Base.metadata.sorted_tables
            for row in connection.execute(table.select())
        )
    assert stored == hashlib.sha256(token.encode()).hexdigest()
    assert token not in dump

    seen = registry.authenticate_device(token)
    assert seen is not None and seen.id == device.id
    assert seen.last_seen is not None and seen.last_seen >= device.created_at
    assert registry.get_device(device.id).last_seen == seen.last_seen
    assert registry.get_device(device.id).profile == {"corruption": "fog", "severity": 3}


def test_wrong_tokens_do_not_authenticate(registry: Registry) -> None:
    _, token = registry.enroll_device("cam-1", None)
    other, other_token = registry.enroll_device("cam-2", {})
    assert token != other_token
    assert registry.authenticate_device(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert registry.authenticate_device("") is None
    assert registry.authenticate_device("x" * 10_000) is None
    assert registry.authenticate_device(other_token).id == other.id  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="token must be a str"):
        registry.authenticate_device(b"bytes-token")  # type: ignore[arg-type]
    assert [d.name for d in registry.list_devices()] == ["cam-1", "cam-2"]


def test_unknown_device_is_not_found(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="device 'nope' not found"):
        registry.get_device("nope")
    with pytest.raises(NotFoundError, match="device"):
        registry.add_telemetry("nope", {"fps": 30})
    with pytest.raises(NotFoundError, match="device"):
        registry.store_context("nope", b"ctx", max_bytes=100)
    assert blob_files(registry) == []


# -- HE contexts -----------------------------------------------------------------------


def test_newest_context_is_current_and_history_is_kept(registry: Registry) -> None:
    device, _ = registry.enroll_device("cam", {})
    assert registry.current_context(device.id) is None
    first = registry.store_context(device.id, b"context-1", max_bytes=1000)
    second = registry.store_context(
        device.id,
        iter([b"context", b"-2"]),
        max_bytes=1000,
        expected_sha256=hashlib.sha256(b"context-2").hexdigest(),
    )
    assert registry.current_context(device.id) == second
    assert registry.list_contexts(device.id) == [second, first]
    assert second.size_bytes == len(b"context-2") and second.is_public
    assert registry.artifacts.read_bytes(second.artifact_sha256) == b"context-2"


def test_failing_context_stream_leaves_no_row_and_no_file(registry: Registry) -> None:
    device, _ = registry.enroll_device("cam", {})

    def truncated() -> Iterator[bytes]:
        yield b"half a context"
        raise ConnectionResetError("client disconnected")

    with pytest.raises(ConnectionResetError):
        registry.store_context(device.id, truncated(), max_bytes=1000)
    with pytest.raises(ArtifactIntegrityError, match="size limit"):
        registry.store_context(device.id, iter([b"x" * 600, b"y" * 600]), max_bytes=1000)
    with pytest.raises(ArtifactIntegrityError, match="sha256 mismatch"):
        registry.store_context(
            device.id, b"ctx", max_bytes=1000, expected_sha256=hashlib.sha256(b"o").hexdigest()
        )
    assert count_rows(registry, "he_contexts") == 0
    assert blob_files(registry) == []
    assert registry.current_context(device.id) is None


# -- jobs ------------------------------------------------------------------------------


def test_job_life_cycle(registry: Registry) -> None:
    model = registry.register_model("m", "zil", {}, {}, b"w")
    job = registry.create_job("zil", {"epochs": 2})
    assert job.state is JobState.QUEUED and job.progress == 0.0 and job.started_at is None
    running = registry.update_job(job.id, state="running", message="epoch 1", log_append="start")
    assert running.started_at is not None and running.finished_at is None
    halfway = registry.update_job(job.id, progress=0.5, log_append="epoch 1 done\n")
    assert halfway.state is JobState.RUNNING and halfway.progress == 0.5
    done = registry.update_job(
        job.id, state=JobState.SUCCEEDED, result={"acc": 0.97}, model_id=model.id
    )
    assert done.progress == 1.0 and done.is_finished
    assert done.finished_at is not None and done.finished_at >= done.started_at  # type: ignore[operator]
    assert done.log == "start\nepoch 1 done\n" and done.message == "epoch 1"
    assert registry.get_job(job.id) == done
    assert registry.get_model_by_id(done.model_id) == model  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "forbidden"),
    [
        ([], "succeeded"),
        (["running", "succeeded"], "running"),
        (["cancelled"], "running"),
        (["running", "failed"], "queued"),
    ],
)
def test_invalid_job_transitions_raise_value_error(
    registry: Registry, path: list[str], forbidden: str
) -> None:
    job = registry.create_job("zil", {})
    for state in path:
        registry.update_job(job.id, state=state)
    before = registry.get_job(job.id)
    with pytest.raises(ValueError, match="cannot"):
        registry.update_job(job.id, state=forbidden, progress=0.3)
    assert registry.get_job(job.id) == before  # nothing half-applied


def test_finished_job_refuses_any_update(registry: Registry) -> None:
    job = registry.create_job("zil", {})
    registry.update_job(job.id, state="cancelled")
    with pytest.raises(JobStateError, match="already cancelled"):
        registry.update_job(job.id, progress=0.9)


def test_bad_job_updates(registry: Registry) -> None:
    job = registry.create_job("zil", {})
    with pytest.raises(ValueError, match=r"progress must be a fraction in \[0, 1\]"):
        registry.update_job(job.id, progress=1.5)
    with pytest.raises(ValueError, match="unknown job state 'paused'"):
        registry.update_job(job.id, state="paused")
    with pytest.raises(NotFoundError, match="model id 999"):
        registry.update_job(job.id, model_id=999)
    with pytest.raises(NotFoundError, match="job 'missing'"):
        registry.get_job("missing")
    with pytest.raises(TypeError, match="message must be a str"):
        registry.update_job(job.id, message=3)  # type: ignore[arg-type]
    assert registry.get_job(job.id) == job


def test_list_jobs_newest_first_and_by_state(registry: Registry) -> None:
    jobs = [registry.create_job(method, {}) for method in ("zil", "ebp", "ffsnn")]
    registry.update_job(jobs[1].id, state="running")
    assert [j.id for j in registry.list_jobs()] == [j.id for j in reversed(jobs)]
    assert [j.id for j in registry.list_jobs(state="running")] == [jobs[1].id]


# -- telemetry -------------------------------------------------------------------------


def test_telemetry_is_recorded_per_device(registry: Registry) -> None:
    cam, _ = registry.enroll_device("cam", {})
    other, _ = registry.enroll_device("other", {})
    for fps in (10, 20, 30):
        registry.add_telemetry(cam.id, {"fps": fps})
    registry.add_telemetry(other.id, {"fps": 1})
    assert [t.payload["fps"] for t in registry.list_telemetry(cam.id)] == [30, 20, 10]
    assert [t.payload["fps"] for t in registry.list_telemetry(cam.id, limit=1)] == [30]
    with pytest.raises(TypeError, match="telemetry payload must be a dict"):
        registry.add_telemetry(cam.id, "fps=30")  # type: ignore[arg-type]


def test_last_seen_is_refreshed_at_most_once_per_resolution(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, token = registry.enroll_device("cam", {})
    first = registry.authenticate_device(token)
    again = registry.authenticate_device(token)
    assert first is not None and again is not None and again.last_seen == first.last_seen
    monkeypatch.setattr(registry_devices, "LAST_SEEN_RESOLUTION", timedelta(0))
    later = registry.authenticate_device(token)
    assert later is not None and later.last_seen > first.last_seen  # type: ignore[operator]
