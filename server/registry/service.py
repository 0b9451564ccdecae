"""The registry service: models, devices, HE contexts, jobs and telemetry behind one object.

One :class:`Registry` is shared by the gRPC servicers and the REST routers of a
server process, from many threads. Each concept has its own module
(:mod:`~server.registry.models`, :mod:`~server.registry.devices`,
:mod:`~server.registry.contexts`, :mod:`~server.registry.jobs`); sessions and
blob-safe writes are in :mod:`~server.registry.transactions`. What comes back are
frozen records (:mod:`server.registry.records`), never live ORM objects.
"""

from __future__ import annotations

import os
from pathlib import Path

from server.registry.artifacts import ArtifactStore
from server.registry.contexts import ContextStore
from server.registry.database import create_registry_engine, upgrade_to_head
from server.registry.devices import DeviceDirectory
from server.registry.jobs import JobQueue
from server.registry.models import ModelCatalog

DATABASE_FILE = "registry.sqlite3"
ARTIFACTS_DIR = "artifacts"


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


class Registry(ModelCatalog, DeviceDirectory, ContextStore, JobQueue):
    """Thread-safe façade over the registry database and artifact store.

    Build it with :func:`open_registry`. Every write is one transaction (all or
    nothing) and every method returns frozen records; lookups of something absent raise
    :class:`~server.registry.errors.NotFoundError` (a ``KeyError``), bad
    arguments raise ``TypeError``/``ValueError``.
    """

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
