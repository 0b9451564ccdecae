"""Alembic environment for the registry.

Normally run in code by :func:`server.registry.database.upgrade_to_head`, which
hands over an open connection in ``config.attributes["connection"]``. Without
one, it connects to ``sqlalchemy.url`` (online) or prints SQL (offline,
``sql=True``), so the usual Alembic commands also work with a Config built by
:func:`server.registry.database.alembic_config`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from server.registry.database import create_registry_engine
from server.registry.tables import Base

target_metadata = Base.metadata
config = context.config


def _run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """Emit the migration SQL for ``sqlalchemy.url``'s dialect without connecting."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrate through the caller's connection, or open one from ``sqlalchemy.url``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise ValueError("no connection passed and no sqlalchemy.url set in the Alembic config")
    engine = create_registry_engine(url)
    try:
        with engine.begin() as new_connection:
            _run_with(new_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
