"""Errors the registry raises, shared by the gRPC servicers and the REST routers."""

from __future__ import annotations


class NotFoundError(KeyError):
    """A model, device, job, context or artifact that the caller named does not exist.

    Subclasses :class:`KeyError` so dictionary-style callers keep working; the
    gateways map it to ``NOT_FOUND`` / HTTP 404. ``kind`` says what was looked
    up (``"model"``, ``"device"``, …) and ``key`` the name or id that missed.
    """

    def __init__(self, kind: str, key: object, detail: str = "") -> None:
        self.kind = kind
        self.key = key
        message = f"{kind} {key!r} not found"
        self.message = f"{message}: {detail}" if detail else message
        super().__init__(self.message)

    def __str__(self) -> str:
        # KeyError would otherwise repr() the message and wrap it in quotes.
        return self.message


class JobStateError(ValueError):
    """A job update that its current state forbids (e.g. ``succeeded`` → ``running``)."""


class ArtifactIntegrityError(ValueError):
    """Uploaded or stored bytes do not match the expected sha256 or size limit."""


class DatabaseUnavailableError(ConnectionError):
    """The registry database cannot be reached or its driver is missing.

    Raised at start-up with the URL (password masked) and the driver's reason,
    so a wrong ``SECDOOD_DB_URL`` is one clear line rather than a traceback.
    """
