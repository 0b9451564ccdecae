"""Registry tests run on both backends: embedded SQLite and a real PostgreSQL server.

The PostgreSQL cases carry the ``postgres`` marker: ``make test`` leaves them out
(no server needed), ``make test-postgres`` runs them against a cluster that this
file starts once per session (tests/postgres_server.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres_server import TemporaryPostgres

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[TemporaryPostgres]:
    cluster = TemporaryPostgres().start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str | None:
    """``None`` (the default SQLite file in the data dir) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_cluster").create_database()
