"""ORM tables of the registry (SQLAlchemy 2 typed declarative mapping).

These classes never leave the :mod:`server.registry` package: callers get the
frozen records of :mod:`server.registry.records` instead. Any change here needs
a new migration in ``server/registry/migrations/versions/`` (a test compares
the migrated database with this metadata and fails on any difference).

Times are stored as UTC. Artifacts are referenced by sha256 into the artifact
store; the database never holds blob bytes.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SHA256_LEN = 64
UUID_LEN = 36
NAME_LEN = 200


class JobState(enum.StrEnum):
    """Life cycle of a training job; ``succeeded``, ``failed``, ``cancelled`` are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Base(DeclarativeBase):
    """Declarative base holding the registry's metadata."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class ModelRow(Base):
    """One stored model artifact: ``(name, version, variant)`` is unique.

    ``version`` counts up per name; the variants of one version (``"float"``,
    ``"int8"``) are exports of the same trained model.
    """

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", "variant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), index=True)
    version: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(NAME_LEN))
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    artifact_sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


class DeviceRow(Base):
    """An enrolled edge device. Only a hash of its bearer token is stored."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(UUID_LEN), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    token_hash: Mapped[str] = mapped_column(String(SHA256_LEN), unique=True)
    profile: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    last_seen: Mapped[datetime | None]


class HEContextRow(Base):
    """A device's uploaded CKKS context; the newest row per device is the current one."""

    __tablename__ = "he_contexts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    artifact_sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    is_public: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime]


class JobRow(Base):
    """A training job of any method, polled by the REST API while a worker runs it."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(UUID_LEN), primary_key=True)
    method: Mapped[str] = mapped_column(String(NAME_LEN))
    config: Mapped[dict[str, Any]]
    # Stored as VARCHAR, not a native enum type: adding a state needs no ALTER TYPE.
    state: Mapped[JobState] = mapped_column(
        Enum(
            JobState,
            name="job_state",
            native_enum=False,
            length=16,
            values_callable=lambda states: [state.value for state in states],
        ),
        index=True,
    )
    progress: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)
    log: Mapped[str] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None]
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class TelemetryRow(Base):
    """One telemetry report a device sent (latencies, OOD rates, adaptation stats…)."""

    __tablename__ = "telemetry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
