"""Alembic migrations: they build exactly the schema the ORM declares, on any backend."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, inspect

from server.registry import open_registry
from server.registry.database import alembic_config, create_registry_engine
from server.registry.tables import Base

VERSION_TABLE = "alembic_version"


def migrated_engine(tmp_path: Path) -> Engine:
    registry = open_registry(None, tmp_path)
    return registry.engine


def diffs_against(engine: Engine, metadata: MetaData) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_migrated_database_matches_the_orm_metadata(tmp_path: Path) -> None:
    engine = migrated_engine(tmp_path)
    assert diffs_against(engine, Base.metadata) == []
    tables = set(inspect(engine).get_table_names())
    assert tables - {VERSION_TABLE} == set(Base.metadata.tables)
    engine.dispose()


def test_comparison_would_notice_a_schema_drift(tmp_path: Path) -> None:
    # Guards the test above against passing vacuously: one extra ORM column must show up.
    engine = migrated_engine(tmp_path)
    drifted = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["jobs"].append_column(Column("priority", Integer, nullable=True))
    diffs = diffs_against(engine, drifted)
    assert any(diff[0] == "add_column" and diff[3].name == "priority" for diff in diffs)
    engine.dispose()


def test_reopening_is_a_no_op_and_stamps_head(tmp_path: Path) -> None:
    open_registry(None, tmp_path).close()
    registry = open_registry(None, tmp_path)
    with registry.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == "0001"
    registry.close()


def test_downgrade_to_base_removes_every_registry_table(tmp_path: Path) -> None:
    engine = migrated_engine(tmp_path)
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
