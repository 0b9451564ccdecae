"""The registry's model catalogue: versioned artifacts addressed by (name, version, variant)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy import text as sql_text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.registry.artifacts import StoredBlob, iter_file_chunks
from server.registry.checks import VARIANT_LEN, check_json, check_name, now
from server.registry.errors import NotFoundError
from server.registry.records import ModelRecord, snapshot
from server.registry.tables import ModelRow
from server.registry.transactions import RegistryCore

#: how often a concurrent "next version" collision is retried before giving up
_VERSION_RETRIES = 8

ArtifactSource = bytes | bytearray | memoryview | str | os.PathLike[str]


def _lock_model_versions(session: Session, name: str) -> None:
    """Serialise version allocation for one model name on PostgreSQL.

    Under READ COMMITTED, concurrent writers all read the same ``max(version)`` and all but
    one lose the unique-key race, again and again under load; a transaction-scoped advisory
    lock on the name makes them take turns (released at commit). SQLite already serialises
    writers, so there is nothing to do there.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sql_text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": name})


class ModelCatalog(RegistryCore):
    """Registers model artifacts and finds them again; part of the registry façade."""

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
        check_name(name, "model name")
        check_name(method, "method")
        check_name(variant, "variant", VARIANT_LEN)
        config = check_json(config, "config")
        metrics = check_json(metrics, "metrics")
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
                created_at=now(),
            )
            session.add(row)
            session.flush()
            return snapshot(row, ModelRecord)

    def register_int8(self, record: ModelRecord, artifact: bytes, quantization: str) -> ModelRecord:
        """Attach ``artifact`` as the int8 variant of ``record``'s version, noting both sizes.

        ``quantization`` says how it was made (stored in the config)."""
        return self.register_model(
            record.name,
            record.method,
            {**record.config, "quantization": quantization},
            {"float_artifact_bytes": record.size_bytes, "int8_artifact_bytes": len(artifact)},
            artifact,
            variant="int8",
            version=record.version,
        )

    def get_model(
        self, name: str, version: int | None = None, variant: str = "float"
    ) -> ModelRecord:
        """One model variant; ``version=None`` means the newest version having that variant."""
        check_name(name, "model name")
        check_name(variant, "variant", VARIANT_LEN)
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
            return snapshot(row, ModelRecord)

    def latest_model(self, name: str, variant: str = "float") -> ModelRecord:
        """The newest version of ``name`` that has ``variant``."""
        return self.get_model(name, None, variant)

    def get_model_by_id(self, model_id: int) -> ModelRecord:
        """A model variant by its row id (as referenced by ``JobRecord.model_id``)."""
        with self._reading() as session:
            row = session.get(ModelRow, model_id)
            if row is None:
                raise NotFoundError("model id", model_id)
            return snapshot(row, ModelRecord)

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        """All model variants (optionally of one name), by name, version, variant."""
        query = select(ModelRow).order_by(ModelRow.name, ModelRow.version, ModelRow.variant)
        if name is not None:
            query = query.where(ModelRow.name == check_name(name, "model name"))
        with self._reading() as session:
            return [snapshot(row, ModelRecord) for row in session.scalars(query)]
