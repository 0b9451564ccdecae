"""Plain, frozen snapshots of registry rows — what every registry call returns.

They are detached from any database session, so gRPC servicers and REST
routers can keep and pass them around freely. JSON fields are private copies:
mutating them changes nothing in the database. Times are timezone-aware UTC.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, TypeVar

from server.registry.tables import JobState

FINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A stored model artifact, addressed by ``(name, version, variant)``."""

    id: int
    name: str
    version: int
    variant: str
    method: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    artifact_sha256: str
    size_bytes: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """An enrolled device (its token hash is deliberately not part of the record)."""

    id: str
    name: str
    profile: dict[str, Any]
    created_at: datetime
    last_seen: datetime | None


@dataclass(frozen=True, slots=True)
class ContextRecord:
    """One uploaded CKKS context of a device; the blob lives in the artifact store."""

    id: int
    device_id: str
    artifact_sha256: str
    size_bytes: int
    is_public: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A training job; ``progress`` is the fraction done in [0, 1]."""

    id: str
    method: str
    config: dict[str, Any]
    state: JobState
    progress: float
    message: str
    log: str
    result: dict[str, Any] | None
    model_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def is_finished(self) -> bool:
        """Whether the job reached a final state and will not change again."""
        return self.state in FINAL_JOB_STATES


@dataclass(frozen=True, slots=True)
class TelemetryRecord:
    """One telemetry report of a device."""

    id: int
    device_id: str
    payload: dict[str, Any]
    created_at: datetime


_Record = TypeVar("_Record")


def as_utc(moment: datetime | None) -> datetime | None:
    """``moment`` as aware UTC (SQLite hands back naive datetimes; everything stored is UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def snapshot(row: Any, record_type: type[_Record], **overrides: Any) -> _Record:
    """The frozen ``record_type`` of an ORM row: same-named fields, JSON deep-copied, UTC times."""
    values = {}
    for field in fields(record_type):
        value = overrides[field.name] if field.name in overrides else getattr(row, field.name)
        if isinstance(value, dict):
            value = copy.deepcopy(value)
        elif isinstance(value, datetime):
            value = as_utc(value)
        values[field.name] = value
    return record_type(**values)
