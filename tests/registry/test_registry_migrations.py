"""Alembic migrations: they build exactly the schema the ORM declares, on any backend."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, inspect
from support import free_loopback_port

from server.registry import open_registry
from server.registry.database import alembic_config, create_registry_engine
from server.registry.errors import DatabaseUnavailableError
from server.registry.tables import Base

VERSION_TABLE = "alembic_version"


def migrated_engine(tmp_path: Path, db_url: str | None) -> Engine:
    registry = open_registry(db_url, tmp_path)
    return registry.engine


def diffs_against(engine: Engine, metadata: MetaData) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_migrated_database_matches_the_orm_metadata(tmp_path: Path, db_url: str | None) -> None:
    engine = migrated_engine(tmp_path, db_url)
    assert diffs_against(engine, Base.metadata) == []
    tables = set(inspect(engine).get_table_names())
    assert tables - {VERSION_TABLE} == set(Base.metadata.tables)
    engine.dispose()


def test_comparison_would_notice_a_schema_drift(tmp_path: Path, db_url: str | None) -> None:
    # Guards the test above against passing vacuously: one extra ORM column must show up.
    engine = migrated_engine(tmp_path, db_url)
    drifted = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["jobs"].append_column(Column("priority", Integer, nullable=True))
    diffs = diffs_against(engine, drifted)
    assert any(diff[0] == "add_column" and diff[3].name == "priority" for diff in diffs)
    engine.dispose()


def test_reopening_is_a_no_op_and_stamps_head(tmp_path: Path, db_url: str | None) -> None:
    open_registry(db_url, tmp_path).close()
    registry = open_registry(db_url, tmp_path)
    with registry.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == "0001"
    registry.close()


def test_downgrade_to_base_removes_every_registry_table(tmp_path: Path, db_url: str | None) -> None:
    engine = migrated_engine(tmp_path, db_url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    assert set(inspect(engine).get_table_names()) <= {VERSION_TABLE}
    engine.dispose()


def test_migration_renders_for_postgresql_without_a_driver() -> None:
    # Offline mode only needs the dialect, not psycopg, so the PostgreSQL DDL is checked here.
    config = alembic_config(db_url="postgresql+psycopg://user:p%40ss@db.example/secdood")
    config.output_buffer = io.StringIO()
    command.upgrade(config, "head", sql=True)
    sql = config.output_buffer.getvalue()
    for table in Base.metadata.tables:
        assert f"CREATE TABLE {table} (" in sql
    assert "TIMESTAMP WITH TIME ZONE" in sql
    assert "SERIAL" in sql  # autoincrement ids


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused_with_a_hint(url: str) -> None:
    with pytest.raises(ValueError, match="in-memory SQLite"):
        create_registry_engine(url)


def test_unreachable_postgresql_url_is_one_clear_error(tmp_path: Path) -> None:
    port = free_loopback_port()  # nothing listens there
    url = f"postgresql://secdood:s3cret@127.0.0.1:{port}/registry"
    with pytest.raises(DatabaseUnavailableError, match="cannot connect") as caught:
        open_registry(url, tmp_path)
    message = str(caught.value)
    assert f"postgresql+psycopg://secdood:***@127.0.0.1:{port}/registry" in message
    assert "s3cret" not in message


def test_url_without_an_installed_driver_names_the_driver(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailableError, match="no driver for mysql://"):
        open_registry("mysql://user@127.0.0.1/registry", tmp_path)
