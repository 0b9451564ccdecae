"""Durability across restarts, SQLite settings, and one registry shared by many threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import text

from server.registry import JobState, open_registry


def test_everything_survives_a_restart(tmp_path: Path, db_url: str | None) -> None:
    data_dir = tmp_path / "data"
    registry = open_registry(db_url, data_dir)
    model = registry.register_model("secdood", "secdood", {"k": 1}, {"auroc": 0.91}, b"weights")
    int8 = registry.register_model("secdood", "secdood", {}, {}, b"q", variant="int8", version=1)
    device, token = registry.enroll_device("cam", {"corruption": "jpeg"})
    context = registry.store_context(device.id, iter([b"ctx-", b"bytes"]), max_bytes=64)
    job = registry.create_job("zil", {"epochs": 1})
    job = registry.update_job(job.id, state="running", progress=0.25, log_append="line")
    telemetry = registry.add_telemetry(device.id, {"latency_ms": 12.5})
    registry.close()

    reopened = open_registry(db_url, data_dir)
    assert reopened.list_models() == [model, int8]
    assert reopened.get_device(device.id) == device
    assert reopened.current_context(device.id) == context
    assert reopened.get_job(job.id) == job
    assert reopened.list_telemetry(device.id) == [telemetry]
    assert reopened.artifacts.read_bytes(context.artifact_sha256) == b"ctx-bytes"
    assert reopened.artifacts.read_bytes(model.artifact_sha256) == b"weights"
    authenticated = reopened.authenticate_device(token)
    assert authenticated is not None and authenticated.id == device.id
    assert reopened.register_model("secdood", "secdood", {}, {}, b"v2").version == 2
    reopened.close()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    with open_registry(None, tmp_path) as registry, registry.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    assert (tmp_path / "registry.sqlite3").is_file()


def test_explicit_sqlite_url_is_honoured(tmp_path: Path) -> None:
    db_file = tmp_path / "elsewhere" / "custom.db"
    db_file.parent.mkdir()
    with open_registry(f"sqlite:///{db_file}", tmp_path / "data") as registry:
        registry.create_job("zil", {})
    assert db_file.is_file() and not (tmp_path / "data" / "registry.sqlite3").exists()


def test_one_registry_shared_by_many_threads(tmp_path: Path, db_url: str | None) -> None:
    registry = open_registry(db_url, tmp_path)
    job = registry.create_job("zil", {})
    registry.update_job(job.id, state="running")
    device, token = registry.enroll_device("cam", {})
    workers, per_worker = 8, 6

    def work(worker: int) -> list[int]:
        versions = []
        for step in range(per_worker):
            payload = f"w{worker}-s{step}".encode()
            versions.append(registry.register_model("shared", "zil", {}, {}, payload).version)
            registry.update_job(job.id, log_append=f"worker {worker} step {step}")
            registry.add_telemetry(device.id, {"worker": worker, "step": step})
            assert registry.authenticate_device(token) is not None
            registry.latest_model("shared")
        return versions

    with ThreadPoolExecutor(max_workers=workers) as pool:
        all_versions = [v for versions in pool.map(work, range(workers)) for v in versions]

    total = workers * per_worker
    assert sorted(all_versions) == list(range(1, total + 1))  # no duplicate, no gap
    log_lines = registry.get_job(job.id).log.splitlines()
    expected = {f"worker {w} step {s}" for w in range(workers) for s in range(per_worker)}
    assert len(log_lines) == total and set(log_lines) == expected  # no lost append
    assert len(registry.list_telemetry(device.id, limit=None)) == total
    assert registry.get_job(job.id).state is JobState.RUNNING
    registry.close()
