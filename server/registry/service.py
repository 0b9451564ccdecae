"""The registry service: models, devices, HE contexts, jobs and telemetry.

One :class:`Registry` is shared by the gRPC servicers and the REST routers of a
server process, from many threads. Each call opens its own short session and
commits (or rolls back) exactly one transaction; what comes back are frozen
records (:mod:`server.registry.records`), never live ORM objects. Blob bytes go
to the content-addressed :class:`~server.registry.artifacts.ArtifactStore`
*before* the row that references them is written, and a newly written blob is
removed again if that row cannot be committed — so a failed call leaves
neither a row nor a file.
"""

from __future__ import annotations

import copy
import json
import math
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, func, select
from sqlalchemy import text as sql_text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from server.registry.artifacts import ArtifactStore, StoredBlob, check_sha256, iter_file_chunks
from server.registry.database import create_registry_engine, upgrade_to_head, write_engine
from server.registry.errors import JobStateError, NotFoundError
from server.registry.records import (
    FINAL_JOB_STATES,
    ContextRecord,
    DeviceRecord,
    JobRecord,
    ModelRecord,
    TelemetryRecord,
)
from server.registry.tables import (
    NAME_LEN,
    DeviceRow,
    HEContextRow,
    JobRow,
    JobState,
    ModelRow,
    TelemetryRow,
)
from server.registry.tokens import MAX_TOKEN_CHARS, hash_token, new_token, token_matches

DATABASE_FILE = "registry.sqlite3"
ARTIFACTS_DIR = "artifacts"
VARIANT_LEN = 32
#: jobs keep at most this many characters of log (the oldest lines are dropped)
MAX_JOB_LOG_CHARS = 1_000_000
#: ``last_seen`` is refreshed at most this often per device (a write per RPC would
#: serialise every authenticated call on SQLite)
LAST_SEEN_RESOLUTION = timedelta(seconds=1)
#: how often a concurrent "next version" collision is retried before giving up
_VERSION_RETRIES = 8


def _lock_model_versions(session: Session, name: str) -> None:
    """Serialise version allocation for one model name on PostgreSQL.

    Under READ COMMITTED, concurrent writers all read the same ``max(version)`` and all but
    one lose the unique-key race, again and again under load; a transaction-scoped advisory
    lock on the name makes them take turns (released at commit). SQLite already serialises
    writers, so there is nothing to do there.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sql_text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": name})


#: which state a job may move to from each state (staying put is always allowed
#: while the job is not finished)
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}

ArtifactSource = bytes | bytearray | memoryview | str | os.PathLike[str]
_Result = TypeVar("_Result")


def open_registry(db_url: str | None, data_dir: str | os.PathLike[str]) -> Registry:
    """Open (creating and migrating as needed) the registry under ``data_dir``.

    ``db_url`` is any SQLAlchemy URL; ``None`` means the embedded SQLite file
    ``<data_dir>/registry.sqlite3``. Artifacts always live in
    ``<data_dir>/artifacts``. Pending Alembic migrations are applied before the
    registry is returned.
    """
    data_path = Path(data_dir)
    data_path.mkdir(parents=True, exist_ok=True)
    if db_url is None:
        db_url = f"sqlite:///{data_path.resolve() / DATABASE_FILE}"
    if not isinstance(db_url, str) or not db_url:
        raise TypeError(f"db_url must be a SQLAlchemy URL string or None, got {db_url!r}")
    engine = create_registry_engine(db_url)
    try:
        upgrade_to_head(engine)
    except BaseException:
        engine.dispose()
        raise
    return Registry(engine, ArtifactStore(data_path / ARTIFACTS_DIR))


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored is UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _check_name(value: object, what: str, max_len: int = NAME_LEN) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value.strip() or len(value) > max_len:
        raise ValueError(f"{what} must be a non-empty string of at most {max_len} characters")
    return value


def _check_json(value: object, what: str, allow_none: bool = False) -> dict[str, Any] | None:
    """A deep copy of ``value`` if it is a JSON object (dict with str keys, finite numbers)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict (a JSON object), got {type(value).__name__}")
    try:
        # allow_nan=False: NaN/inf are not JSON and PostgreSQL would reject them.
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be JSON-serialisable with finite numbers: {error}") from None
    return copy.deepcopy(value)


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str (a UUID), got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must be a non-empty string")
    return value


def _model_record(row: ModelRow) -> ModelRecord:
    return ModelRecord(
        id=row.id,
        name=row.name,
        version=row.version,
        variant=row.variant,
        method=row.method,
        config=copy.deepcopy(row.config),
        metrics=copy.deepcopy(row.metrics),
        artifact_sha256=row.artifact_sha256,
        size_bytes=row.size_bytes,
        created_at=_utc(row.created_at),
    )


def _device_record(row: DeviceRow) -> DeviceRecord:
    return DeviceRecord(
        id=row.id,
        name=row.name,
        profile=copy.deepcopy(row.profile),
        created_at=_utc(row.created_at),
        last_seen=_utc(row.last_seen),
    )


def _context_record(row: HEContextRow) -> ContextRecord:
    return ContextRecord(
        id=row.id,
        device_id=row.device_id,
        artifact_sha256=row.artifact_sha256,
        size_bytes=row.size_bytes,
        is_public=row.is_public,
        created_at=_utc(row.created_at),
    )


def _job_record(row: JobRow) -> JobRecord:
    return JobRecord(
        id=row.id,
        method=row.method,
        config=copy.deepcopy(row.config),
        state=JobState(row.state),
        progress=row.progress,
        message=row.message,
        log=row.log,
        result=copy.deepcopy(row.result),
        model_id=row.model_id,
        created_at=_utc(row.created_at),
        started_at=_utc(row.started_at),
        finished_at=_utc(row.finished_at),
    )


def _telemetry_record(row: TelemetryRow) -> TelemetryRecord:
    return TelemetryRecord(
        id=row.id,
        device_id=row.device_id,
        payload=copy.deepcopy(row.payload),
        created_at=_utc(row.created_at),
    )


class Registry:
    """Thread-safe façade over the registry database and artifact store.

    Build it with :func:`open_registry`. Every write is one transaction (all or
    nothing) and every method returns frozen records; lookups of something absent raise
    :class:`~server.registry.errors.NotFoundError` (a ``KeyError``), bad
    arguments raise ``TypeError``/``ValueError``.
    """

    def __init__(self, engine: Engine, artifacts: ArtifactStore) -> None:
        self.engine = engine
        self.artifacts = artifacts
        self._read_sessions = sessionmaker(engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(write_engine(engine), expire_on_commit=False)

    def close(self) -> None:
        """Release all pooled database connections (the registry can be reopened later)."""
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        with self._read_sessions() as session, session.begin():
            yield session

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._write_sessions() as session, session.begin():
            yield session

    def _write_referencing_blob(self, blob: StoredBlob, write: Callable[[], _Result]) -> _Result:
        """Run ``write`` (one transaction); on failure drop ``blob`` if this call created it."""
        try:
            return write()
        except BaseException:
            if blob.created:
                self._drop_blob_if_unreferenced(blob.sha256)
            raise

    def _drop_blob_if_unreferenced(self, sha256: str) -> None:
        with self._reading() as session:
            model_id = session.scalar(
                select(ModelRow.id).where(ModelRow.artifact_sha256 == sha256).limit(1)
            )
            context_id = session.scalar(
                select(HEContextRow.id).where(HEContextRow.artifact_sha256 == sha256).limit(1)
            )
        if model_id is None and context_id is None:
            self.artifacts.delete(sha256)

    # -- models --------------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        method: str,
        config: dict[str, Any],
        metrics: dict[str, Any],
        artifact: ArtifactSource,
        variant: str = "float",
        version: int | None = None,
    ) -> ModelRecord:
        """Store a model artifact (bytes, or a path to a file) and record it.

        With ``version=None`` the model gets the next version of ``name``
        (1 for a new name). Pass an existing ``version`` to attach another
        variant (e.g. the ``"int8"`` export) to that version; a
        ``(name, version, variant)`` that already exists is a ``ValueError``.
        """
        _check_name(name, "model name")
        _check_name(method, "method")
        _check_name(variant, "variant", VARIANT_LEN)
        config = _check_json(config, "config")
        metrics = _check_json(metrics, "metrics")
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, int) or version < 1
        ):
            raise ValueError(f"version must be a positive int or None, got {version!r}")

        if isinstance(artifact, bytes | bytearray | memoryview):
            blob = self.artifacts.ingest([artifact])
        elif isinstance(artifact, str | os.PathLike):
            path = Path(artifact)
            if not path.is_file():
                raise FileNotFoundError(f"model artifact file not found: {path}")
            blob = self.artifacts.ingest(iter_file_chunks(path))
        else:
            raise TypeError(
                f"artifact must be bytes or a path to a file, got {type(artifact).__name__}"
            )

        def insert() -> ModelRecord:
            for _attempt in range(_VERSION_RETRIES):
                try:
                    return self._insert_model(name, method, config, metrics, blob, variant, version)
                except IntegrityError:
                    if version is not None:
                        raise ValueError(
                            f"model {name!r} version {version} already has a {variant!r} variant"
                        ) from None
                    # Another writer took this version number first; count again.
            raise RuntimeError(f"could not allocate a new version for model {name!r}")

        return self._write_referencing_blob(blob, insert)

    def _insert_model(
        self,
        name: str,
        method: str,
        config: dict[str, Any] | None,
        metrics: dict[str, Any] | None,
        blob: StoredBlob,
        variant: str,
        version: int | None,
    ) -> ModelRecord:
        with self._writing() as session:
            _lock_model_versions(session, name)
            latest = session.scalar(select(func.max(ModelRow.version)).where(ModelRow.name == name))
            if version is None:
                version = (latest or 0) + 1
            elif latest is None or version > latest:
                raise NotFoundError(
                    "model",
                    name,
                    f"version {version} does not exist (latest: {latest}); "
                    "pass version=None to create a new version",
                )
            row = ModelRow(
                name=name,
                version=version,
                variant=variant,
                method=method,
                config=config,
                metrics=metrics,
                artifact_sha256=blob.sha256,
                size_bytes=blob.size_bytes,
                created_at=_now(),
            )
            session.add(row)
            session.flush()
            return _model_record(row)

    def get_model(
        self, name: str, version: int | None = None, variant: str = "float"
    ) -> ModelRecord:
        """One model variant; ``version=None`` means the newest version having that variant."""
        _check_name(name, "model name")
        _check_name(variant, "variant", VARIANT_LEN)
        query = select(ModelRow).where(ModelRow.name == name, ModelRow.variant == variant)
        if version is not None:
            query = query.where(ModelRow.version == version)
        with self._reading() as session:
            row = session.scalars(query.order_by(ModelRow.version.desc()).limit(1)).first()
            if row is None:
                if session.scalar(select(ModelRow.id).where(ModelRow.name == name).limit(1)):
                    wanted = f"version {version}" if version is not None else "any version"
                    raise NotFoundError("model", name, f"no {variant!r} variant for {wanted}")
                raise NotFoundError("model", name)
            return _model_record(row)

    def latest_model(self, name: str, variant: str = "float") -> ModelRecord:
        """The newest version of ``name`` that has ``variant``."""
        return self.get_model(name, None, variant)

    def get_model_by_id(self, model_id: int) -> ModelRecord:
        """A model variant by its row id (as referenced by ``JobRecord.model_id``)."""
        with self._reading() as session:
            row = session.get(ModelRow, model_id)
            if row is None:
                raise NotFoundError("model id", model_id)
            return _model_record(row)

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        """All model variants (optionally of one name), by name, version, variant."""
        query = select(ModelRow).order_by(ModelRow.name, ModelRow.version, ModelRow.variant)
        if name is not None:
            query = query.where(ModelRow.name == _check_name(name, "model name"))
        with self._reading() as session:
            return [_model_record(row) for row in session.scalars(query)]

    # -- devices -------------------------------------------------------------------------

    def enroll_device(
        self, name: str, profile: dict[str, Any] | None = None
    ) -> tuple[DeviceRecord, str]:
        """Enrol a device; return its record and its bearer token.

        The plaintext token is returned exactly once — only its sha256 is
        stored (see :mod:`server.registry.tokens`).
        """
        _check_name(name, "device name")
        profile = _check_json({} if profile is None else profile, "profile")
        token = new_token()
        with self._writing() as session:
            row = DeviceRow(
                id=str(uuid.uuid4()),
                name=name,
                token_hash=hash_token(token),
                profile=profile,
                created_at=_now(),
                last_seen=None,
            )
            session.add(row)
            session.flush()
            return _device_record(row), token

    def authenticate_device(self, token: str) -> DeviceRecord | None:
        """The device owning ``token``, or None if no device has it.

        Also refreshes the device's ``last_seen`` (to within
        :data:`LAST_SEEN_RESOLUTION`).
        """
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, got {type(token).__name__}")
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        token_hash = hash_token(token)
        # Look up first without the write lock, so floods of bad tokens cannot
        # queue up behind (or block) real writes.
        with self._reading() as session:
            row = session.scalars(
                select(DeviceRow).where(DeviceRow.token_hash == token_hash)
            ).first()
            # The indexed lookup can only leak timing about the hash, never the token;
            # the final check is constant-time regardless.
            if row is None or not token_matches(token, row.token_hash):
                return None
            device_id, last_seen = row.id, _utc(row.last_seen)
            if last_seen is not None and _now() - last_seen < LAST_SEEN_RESOLUTION:
                # Every RPC authenticates; a commit per call would serialise them all.
                return _device_record(row)
        with self._writing() as session:
            row = session.get(DeviceRow, device_id)
            if row is None or not token_matches(token, row.token_hash):
                return None  # removed or re-keyed in between
            row.last_seen = _now()
            session.flush()
            return _device_record(row)

    def get_device(self, device_id: str) -> DeviceRecord:
        """An enrolled device by id."""
        _check_id(device_id, "device_id")
        with self._reading() as session:
            return _device_record(self._device_row(session, device_id))

    def list_devices(self) -> list[DeviceRecord]:
        """All enrolled devices, oldest first."""
        with self._reading() as session:
            query = select(DeviceRow).order_by(DeviceRow.created_at, DeviceRow.id)
            return [_device_record(row) for row in session.scalars(query)]

    @staticmethod
    def _device_row(session: Session, device_id: str) -> DeviceRow:
        row = session.get(DeviceRow, device_id)
        if row is None:
            raise NotFoundError("device", device_id)
        return row

    # -- HE contexts ---------------------------------------------------------------------

    def store_context(
        self,
        device_id: str,
        data: bytes | Iterable[bytes],
        max_bytes: int,
        expected_sha256: str | None = None,
        is_public: bool = True,
    ) -> ContextRecord:
        """Store a device's serialised CKKS context and make it the current one.

        ``data`` is the whole blob or a stream of chunks (a gRPC client stream).
        Size cap and sha256 are checked before anything is recorded; a failed
        or truncated upload leaves no row and no file. Older contexts are kept
        as history.
        """
        _check_id(device_id, "device_id")
        if not isinstance(is_public, bool):
            raise TypeError(f"is_public must be a bool, got {type(is_public).__name__}")
        if expected_sha256 is not None:
            check_sha256(expected_sha256)
        with self._reading() as session:
            self._device_row(session, device_id)  # fail fast, before taking any bytes
        chunks = [data] if isinstance(data, bytes | bytearray | memoryview) else data
        blob = self.artifacts.ingest(chunks, max_bytes, expected_sha256)

        def insert() -> ContextRecord:
            with self._writing() as session:
                self._device_row(session, device_id)
                row = HEContextRow(
                    device_id=device_id,
                    artifact_sha256=blob.sha256,
                    size_bytes=blob.size_bytes,
                    is_public=is_public,
                    created_at=_now(),
                )
                session.add(row)
                session.flush()
                return _context_record(row)

        return self._write_referencing_blob(blob, insert)

    def current_context(self, device_id: str) -> ContextRecord | None:
        """The device's newest context, or None if it has not uploaded one."""
        history = self.list_contexts(device_id, limit=1)
        return history[0] if history else None

    def list_contexts(self, device_id: str, limit: int | None = None) -> list[ContextRecord]:
        """A device's contexts, newest first."""
        _check_id(device_id, "device_id")
        query = (
            select(HEContextRow)
            .where(HEContextRow.device_id == device_id)
            .order_by(HEContextRow.id.desc())
            .limit(limit)
        )
        with self._reading() as session:
            self._device_row(session, device_id)
            return [_context_record(row) for row in session.scalars(query)]

    # -- jobs ----------------------------------------------------------------------------

    def create_job(self, method: str, config: dict[str, Any]) -> JobRecord:
        """Queue a training job of ``method``; a worker picks it up by id."""
        _check_name(method, "method")
        config = _check_json(config, "config")
        with self._writing() as session:
            row = JobRow(
                id=str(uuid.uuid4()),
                method=method,
                config=config,
                state=JobState.QUEUED,
                progress=0.0,
                message="",
                log="",
                result=None,
                model_id=None,
                created_at=_now(),
                started_at=None,
                finished_at=None,
            )
            session.add(row)
            session.flush()
            return _job_record(row)

    def update_job(
        self,
        job_id: str,
        *,
        state: JobState | str | None = None,
        progress: float | None = None,
        message: str | None = None,
        log_append: str | None = None,
        result: dict[str, Any] | None = None,
        model_id: int | None = None,
    ) -> JobRecord:
        """Change a job atomically; fields left as None stay as they are.

        Allowed moves: queued → running | failed | cancelled, running →
        succeeded | failed | cancelled. A finished job cannot change at all
        (:class:`~server.registry.errors.JobStateError`, a ``ValueError``), so a
        worker learns of a cancellation from its next update. ``log_append``
        adds text to the log (a newline is added if missing). Entering
        ``running`` sets ``started_at``; entering a final state sets
        ``finished_at``, and ``succeeded`` sets progress to 1.
        """
        _check_id(job_id, "job_id")
        new_state = _parse_state(state)
        if progress is not None:
            if isinstance(progress, bool) or not isinstance(progress, int | float):
                raise TypeError(f"progress must be a number, got {type(progress).__name__}")
            if not (math.isfinite(progress) and 0.0 <= progress <= 1.0):
                raise ValueError(f"progress must be a fraction in [0, 1], got {progress}")
        for text, what in ((message, "message"), (log_append, "log_append")):
            if text is not None and not isinstance(text, str):
                raise TypeError(f"{what} must be a str, got {type(text).__name__}")
        result = _check_json(result, "result", allow_none=True)
        if model_id is not None and (isinstance(model_id, bool) or not isinstance(model_id, int)):
            raise TypeError(f"model_id must be an int, got {type(model_id).__name__}")

        with self._writing() as session:
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise NotFoundError("job", job_id)
            current = JobState(row.state)
            if current in FINAL_JOB_STATES:
                raise JobStateError(
                    f"job {job_id} is already {current.value}; a finished job cannot change"
                )
            if new_state is not None and new_state != current:
                if new_state not in JOB_TRANSITIONS[current]:
                    allowed = sorted(state.value for state in JOB_TRANSITIONS[current])
                    raise JobStateError(
                        f"job {job_id} cannot go from {current.value} to {new_state.value}; "
                        f"allowed: {', '.join(allowed)}"
                    )
                now = _now()
                row.state = new_state
                if new_state is JobState.RUNNING:
                    row.started_at = now
                if new_state in FINAL_JOB_STATES:
                    row.finished_at = now
                if new_state is JobState.SUCCEEDED and progress is None:
                    progress = 1.0
            if model_id is not None:
                if session.get(ModelRow, model_id) is None:
                    raise NotFoundError("model id", model_id)
                row.model_id = model_id
            if progress is not None:
                row.progress = float(progress)
            if message is not None:
                row.message = message
            if log_append:
                line = log_append if log_append.endswith("\n") else log_append + "\n"
                row.log = (row.log + line)[-MAX_JOB_LOG_CHARS:]
            if result is not None:
                row.result = result
            session.flush()
            return _job_record(row)

    def get_job(self, job_id: str) -> JobRecord:
        """A job by id."""
        _check_id(job_id, "job_id")
        with self._reading() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFoundError("job", job_id)
            return _job_record(row)

    def list_jobs(self, state: JobState | str | None = None) -> list[JobRecord]:
        """All jobs (optionally only those in ``state``), newest first."""
        query = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id)
        wanted = _parse_state(state)
        if wanted is not None:
            query = query.where(JobRow.state == wanted)
        with self._reading() as session:
            return [_job_record(row) for row in session.scalars(query)]

    # -- telemetry -----------------------------------------------------------------------

    def add_telemetry(self, device_id: str, payload: dict[str, Any]) -> TelemetryRecord:
        """Record one telemetry report of an enrolled device."""
        _check_id(device_id, "device_id")
        payload = _check_json(payload, "telemetry payload")
        with self._writing() as session:
            self._device_row(session, device_id)
            row = TelemetryRow(device_id=device_id, payload=payload, created_at=_now())
            session.add(row)
            session.flush()
            return _telemetry_record(row)

    def list_telemetry(self, device_id: str, limit: int | None = 100) -> list[TelemetryRecord]:
        """A device's most recent telemetry reports, newest first."""
        _check_id(device_id, "device_id")
        query = (
            select(TelemetryRow)
            .where(TelemetryRow.device_id == device_id)
            .order_by(TelemetryRow.id.desc())
            .limit(limit)
        )
        with self._reading() as session:
            self._device_row(session, device_id)
            return [_telemetry_record(row) for row in session.scalars(query)]


def _parse_state(state: JobState | str | None) -> JobState | None:
    if state is None or isinstance(state, JobState):
        return state
    if not isinstance(state, str):
        raise TypeError(f"job state must be a JobState or str, got {type(state).__name__}")
    try:
        return JobState(state)
    except ValueError:
        allowed = ", ".join(member.value for member in JobState)
        raise ValueError(f"unknown job state {state!r}; expected one of: {allowed}") from None
