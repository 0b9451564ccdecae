"""Enrolled devices of the registry: enrolment, bearer-token lookup and their telemetry."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from server.registry.checks import check_id, check_json, check_name, now
from server.registry.records import DeviceRecord, TelemetryRecord, as_utc, snapshot
from server.registry.tables import DeviceRow, TelemetryRow
from server.registry.tokens import MAX_TOKEN_CHARS, hash_token, new_token, token_matches
from server.registry.transactions import RegistryCore

#: ``last_seen`` is refreshed at most this often per device (a write per RPC would
#: serialise every authenticated call on SQLite)
LAST_SEEN_RESOLUTION = timedelta(seconds=1)


class DeviceDirectory(RegistryCore):
    """Devices and what they report; part of :class:`~server.registry.Registry`."""

    def enroll_device(
        self, name: str, profile: dict[str, Any] | None = None
    ) -> tuple[DeviceRecord, str]:
        """Enrol a device; return its record and its bearer token.

        The plaintext token is returned exactly once — only its sha256 is
        stored (see :mod:`server.registry.tokens`).
        """
        check_name(name, "device name")
        profile = check_json({} if profile is None else profile, "profile")
        token = new_token()
        with self._writing() as session:
            row = DeviceRow(
                id=str(uuid.uuid4()),
                name=name,
                token_hash=hash_token(token),
                profile=profile,
                created_at=now(),
                last_seen=None,
            )
            session.add(row)
            session.flush()
            return snapshot(row, DeviceRecord), token

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
            device_id, last_seen = row.id, as_utc(row.last_seen)
            if last_seen is not None and now() - last_seen < LAST_SEEN_RESOLUTION:
                # Every RPC authenticates; a commit per call would serialise them all.
                return snapshot(row, DeviceRecord)
        with self._writing() as session:
            row = session.get(DeviceRow, device_id)
            if row is None or not token_matches(token, row.token_hash):
                return None  # removed or re-keyed in between
            row.last_seen = now()
            session.flush()
            return snapshot(row, DeviceRecord)

    def get_device(self, device_id: str) -> DeviceRecord:
        """An enrolled device by id."""
        check_id(device_id, "device_id")
        with self._reading() as session:
            return snapshot(self._device_row(session, device_id), DeviceRecord)

    def list_devices(self) -> list[DeviceRecord]:
        """All enrolled devices, oldest first."""
        with self._reading() as session:
            query = select(DeviceRow).order_by(DeviceRow.created_at, DeviceRow.id)
            return [snapshot(row, DeviceRecord) for row in session.scalars(query)]

    def add_telemetry(self, device_id: str, payload: dict[str, Any]) -> TelemetryRecord:
        """Record one telemetry report of an enrolled device."""
        check_id(device_id, "device_id")
        payload = check_json(payload, "telemetry payload")
        with self._writing() as session:
            self._device_row(session, device_id)
            row = TelemetryRow(device_id=device_id, payload=payload, created_at=now())
            session.add(row)
            session.flush()
            return snapshot(row, TelemetryRecord)

    def list_telemetry(self, device_id: str, limit: int | None = 100) -> list[TelemetryRecord]:
        """A device's most recent telemetry reports, newest first."""
        check_id(device_id, "device_id")
        query = (
            select(TelemetryRow)
            .where(TelemetryRow.device_id == device_id)
            .order_by(TelemetryRow.id.desc())
            .limit(limit)
        )
        with self._reading() as session:
            self._device_row(session, device_id)
            return [snapshot(row, TelemetryRecord) for row in session.scalars(query)]
