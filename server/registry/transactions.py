"""Sessions and blob-safe writes: what every part of the :class:`~server.registry.Registry` uses.

Each call opens its own short session and commits (or rolls back) exactly one
transaction. Blob bytes go to the content-addressed
:class:`~server.registry.artifacts.ArtifactStore` *before* the row that references
them is written, and a newly written blob is removed again if that row cannot be
committed — so a failed call leaves neither a row nor a file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from server.registry.artifacts import ArtifactStore, StoredBlob
from server.registry.database import write_engine
from server.registry.errors import NotFoundError
from server.registry.tables import DeviceRow, HEContextRow, ModelRow

_Result = TypeVar("_Result")


class RegistryCore:
    """The engine, the artifact store and one-transaction sessions over them."""

    def __init__(self, engine: Engine, artifacts: ArtifactStore) -> None:
        self.engine = engine
        self.artifacts = artifacts
        self._read_sessions = sessionmaker(engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(write_engine(engine), expire_on_commit=False)

    def close(self) -> None:
        """Release all pooled database connections (the registry can be reopened later)."""
        self.engine.dispose()

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

    @staticmethod
    def _device_row(session: Session, device_id: str) -> DeviceRow:
        row = session.get(DeviceRow, device_id)
        if row is None:
            raise NotFoundError("device", device_id)
        return row
