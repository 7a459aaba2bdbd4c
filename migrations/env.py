"""Alembic environment: the URL comes from the caller (``upgrade_to_head``) or from
``NOMINAL_DATABASE_URL``; SQLite runs in batch mode so that later ALTERs work there too."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from app.db.models import Base
from app.db.session import make_engine

config = context.config
target_metadata = Base.metadata
MIGRATION_LOCK = 0x4E4F4D  # "NOM": advisory lock key for migrations


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from app.settings import Settings

    return Settings().database_url


def _run(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        # Alembic runs SQLite migrations one transaction each and reads the current revision
        # outside them, so a second process could plan from a revision that the first is about
        # to move past. One BEGIN IMMEDIATE around it all (SQLite's DDL is transactional) makes
        # the read and every migration one unit: starters serialise on the write lock.
        with connection.begin():
            _migrate(connection)
        return
    _migrate(connection)


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        # Replicas starting together must not migrate together: the first one takes the lock,
        # the others wait and then find the schema at head (PostgreSQL: an advisory lock held
        # until commit; SQLite: the write lock of the transaction opened in ``_run``).
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=_url().startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url(), foreign_keys=False)
    try:
        with engine.connect() as connection:
            _run(connection.execution_options(nominal_sqlite_begin="IMMEDIATE"))
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
