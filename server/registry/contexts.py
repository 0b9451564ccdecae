"""The devices' uploaded CKKS public contexts: the newest is current, older ones are history."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from server.registry.artifacts import check_sha256
from server.registry.checks import check_id, now
from server.registry.records import ContextRecord, snapshot
from server.registry.tables import HEContextRow
from server.registry.transactions import RegistryCore


class ContextStore(RegistryCore):
    """Stores and finds device HE contexts; part of :class:`~server.registry.Registry`."""

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
        check_id(device_id, "device_id")
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
                    created_at=now(),
                )
                session.add(row)
                session.flush()
                return snapshot(row, ContextRecord)

        return self._write_referencing_blob(blob, insert)

    def current_context(self, device_id: str) -> ContextRecord | None:
        """The device's newest context, or None if it has not uploaded one."""
        history = self.list_contexts(device_id, limit=1)
        return history[0] if history else None

    def list_contexts(self, device_id: str, limit: int | None = None) -> list[ContextRecord]:
        """A device's contexts, newest first."""
        check_id(device_id, "device_id")
        query = (
            select(HEContextRow)
            .where(HEContextRow.device_id == device_id)
            .order_by(HEContextRow.id.desc())
            .limit(limit)
        )
        with self._reading() as session:
            self._device_row(session, device_id)
            return [snapshot(row, ContextRecord) for row in session.scalars(query)]
