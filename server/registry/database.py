"""Engine set-up and schema migrations for the registry database.

SQLite (the embedded default) gets what a multi-threaded server needs:
connections usable from any thread, WAL journaling (readers never block the
writer), foreign keys enforced, a busy timeout, and ``BEGIN IMMEDIATE`` for
write transactions so that two threads doing read-then-write (e.g. "next model
version") queue up instead of failing with "database is locked". Any other
SQLAlchemy URL (PostgreSQL) is used as is, except that a bare ``postgresql://``
means the psycopg 3 driver that the ``server`` extra installs.

Migrations are Alembic revisions in ``server/registry/migrations``; they run
in code on every start (:func:`upgrade_to_head`), no ``alembic.ini`` needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

from server.registry.errors import DatabaseUnavailableError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: the driver a bare ``postgresql://`` URL gets (psycopg 3, in the ``server`` extra)
POSTGRES_DRIVER = "postgresql+psycopg"
#: execution option that makes a SQLite transaction start with BEGIN IMMEDIATE
WRITE_OPTION = "secdood_write"
SQLITE_BUSY_TIMEOUT_S = 30.0


def create_registry_engine(db_url: str) -> Engine:
    """An engine for ``db_url`` with the SQLite pragmas above where relevant."""
    url = make_url(db_url)
    if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
        url = url.set(drivername=POSTGRES_DRIVER)
    if url.get_backend_name() != "sqlite":
        try:
            return create_engine(url, pool_pre_ping=True)
        except ModuleNotFoundError as exc:
            raise DatabaseUnavailableError(
                f"no driver for {masked(url)}: {exc}; install the 'server' extra "
                "(psycopg for PostgreSQL)"
            ) from exc

    if url.database in (None, "", ":memory:"):
        # Each pooled connection would see its own empty database, and sharing one
        # connection (StaticPool) breaks as soon as two threads open transactions.
        raise ValueError(
            f"in-memory SQLite ({db_url!r}) cannot back a multi-threaded registry; "
            "use a file URL such as 'sqlite:////path/registry.sqlite3' or db_url=None"
        )
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
    )

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, not the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def write_engine(engine: Engine) -> Engine:
    """A view of ``engine`` (same pool) whose transactions take the write lock up front."""
    return engine.execution_options(**{WRITE_OPTION: True})


def alembic_config(connection: Any | None = None, db_url: str | None = None) -> Config:
    """An Alembic config built in code, pointing at the package's migration scripts.

    Pass an open ``connection`` to migrate inside it (what :func:`upgrade_to_head`
    does) or a ``db_url`` for offline SQL generation.
    """
    config = Config()
    # ConfigParser interpolation treats "%" specially (URL-encoded passwords, paths).
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if db_url is not None:
        config.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def masked(url: URL) -> str:
    """``url`` as text with its password hidden, for messages and logs."""
    return url.render_as_string(hide_password=True)


def upgrade_to_head(engine: Engine) -> None:
    """Apply every pending migration (a no-op when the schema is current).

    A database that refuses the connection becomes :class:`DatabaseUnavailableError`
    naming the URL (password masked) and the server's reason.
    """
    try:
        connection = write_engine(engine).connect()
    except DBAPIError as exc:
        reason = str(exc.orig).strip() or type(exc.orig).__name__
        raise DatabaseUnavailableError(
            f"cannot connect to the registry database {masked(engine.url)}: {reason} "
            "(check SECDOOD_DB_URL and that the database server is running)"
        ) from exc
    with connection, connection.begin():
        command.upgrade(alembic_config(connection), "head")
