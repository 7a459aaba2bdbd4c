"""Engines and sessions for SQLite and PostgreSQL behind one small object.

SQLite needs care to be safe with a training thread and request threads writing at once:
- WAL journal so readers never block on the writer, and a busy timeout so writers queue;
- write transactions start with ``BEGIN IMMEDIATE``. A deferred transaction that reads and then
  writes fails at once with "database is locked" when another connection committed in between
  (SQLite cannot upgrade a stale snapshot, and the busy timeout does not apply); taking the write
  lock up front turns that race into an ordinary, bounded wait.
Reads use deferred transactions, so inspect traffic never waits for a writer.
PostgreSQL needs none of this: both factories behave the same there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_BEGIN_MODE = "nominal_sqlite_begin"


def make_engine(url: str, *, timeout_s: float = 10.0, pool_size: int = 10,
                foreign_keys: bool = True) -> Engine:
    """An engine for ``url`` with the pragmas / timeouts this service relies on.

    ``foreign_keys=False`` is for migrations only: SQLite rebuilds tables to alter them, and
    with enforcement on, dropping the old ``variant`` table would cascade to every image.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": timeout_s, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=2 * pool_size,
        )
        _configure_sqlite(engine, timeout_s, foreign_keys)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=timeout_s,
        connect_args={"connect_timeout": max(1, int(timeout_s))},
    )


def _configure_sqlite(engine: Engine, timeout_s: float, foreign_keys: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # Cascades and SET NULL rely on enforcement (off by default in SQLite).
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(_BEGIN_MODE, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """One engine and two session factories: ``read`` (deferred) and ``write`` (immediate)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, pool_size: int = 10) -> None:
        self.url = url
        self.engine = make_engine(url, timeout_s=timeout_s, pool_size=pool_size)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        write_engine = (self.engine.execution_options(**{_BEGIN_MODE: "IMMEDIATE"})
                        if self.is_sqlite else self.engine)
        # expire_on_commit=False: rows returned by services stay readable after commit.
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(write_engine, expire_on_commit=False)

    def session(self, *, write: bool = False) -> Session:
        """A new session; the caller commits. ``write=True`` takes SQLite's write lock early."""
        return (self._write if write else self._read)()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A short read-only unit of work (rolled back and closed on exit)."""
        with self.session() as session:
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A short write unit of work: committed on success, rolled back on error."""
        with self.session(write=True) as session, session.begin():
            yield session

    def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
