"""Alembic owns the schema: the migration is reversible and matches the SQLAlchemy models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.db.migrate import downgrade_to_base, upgrade_to_head
from app.db.models import Base

TABLES = {"variant", "image", "model", "model_artifact"}


def test_schema_matches_models(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], diff


def test_upgrade_is_idempotent_and_reversible(database_url: str) -> None:
    upgrade_to_head(database_url)  # already at head: no-op
    engine = create_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        downgrade_to_base(database_url)
        assert not TABLES & set(inspect(engine).get_table_names())
        upgrade_to_head(database_url)
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def test_constraints_have_explicit_names(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        inspector = inspect(engine)
        for table in TABLES:
            for fk in inspector.get_foreign_keys(table):
                assert fk["name"] and fk["name"].startswith("fk_"), (table, fk)
            for uq in inspector.get_unique_constraints(table):
                assert uq["name"] and uq["name"].startswith("uq_"), (table, uq)
    finally:
        engine.dispose()
