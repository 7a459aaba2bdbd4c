"""Apply Alembic migrations from code: the service upgrades its database at start-up.

``nominal migrate --wait 60`` (and ``nominal serve``, which migrates before serving) call
``wait_for_database`` and ``upgrade_to_head``. Replicas starting together are safe: the
migration takes a lock (see migrations/env.py), so one migrates and the others find head.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_fixed,
)

log = logging.getLogger(__name__)

# migrations/ and alembic.ini sit at the repository root, next to the app package; an installed
# (non-editable) package finds them in the working directory instead (the image's /app).
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def project_root() -> Path:
    """Where ``alembic.ini`` and ``migrations/`` are: the source checkout, else the cwd."""
    for root in (_SOURCE_ROOT, Path.cwd()):
        if (root / "alembic.ini").is_file() and (root / "migrations").is_dir():
            return root
    raise RuntimeError(f"alembic.ini and migrations/ not found in {_SOURCE_ROOT} or "
                       f"{Path.cwd()}; run from the directory that holds them")


def alembic_config(database_url: str) -> Config:
    """Alembic configuration for ``database_url`` (never the URL in alembic.ini)."""
    root = project_root()
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str) -> None:
    """Bring the schema at ``database_url`` to the newest revision (idempotent)."""
    command.upgrade(alembic_config(database_url), "head")


def current_revision(database_url: str) -> str | None:
    """The Alembic revision the database is at (None: not migrated at all)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def downgrade_to_base(database_url: str) -> None:
    """Remove every table Alembic created (for tests of reversibility)."""
    command.downgrade(alembic_config(database_url), "base")


def wait_for_database(database_url: str, timeout_s: float, interval_s: float = 1.0) -> None:
    """Return once ``SELECT 1`` succeeds; ``TimeoutError`` naming the last error otherwise.
    (A database container reports healthy a little before it accepts every connection, and
    on a restart the API may well be up first.)"""
    url = make_url(database_url)
    shown = url.render_as_string(hide_password=True)
    engine = create_engine(database_url, pool_pre_ping=True, connect_args=(
        {"connect_timeout": max(1, int(interval_s * 3))}
        if url.get_backend_name() == "postgresql" else {}))

    def waiting(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.info("waiting for database %s (attempt %d): %s", shown, state.attempt_number,
                 _first_line(error))

    retrying = Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(interval_s),
                        retry=retry_if_exception_type(SQLAlchemyError), before_sleep=waiting,
                        reraise=True)
    try:
        for attempt in retrying:
            with attempt, engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        log.info("database %s answers (attempt %d)", shown,
                 retrying.statistics.get("attempt_number", 1))
    except SQLAlchemyError as exc:
        raise TimeoutError(f"database {shown} did not answer within {timeout_s:g} s: "
                           f"{_first_line(exc)}") from None
    finally:
        engine.dispose()


def _first_line(error: BaseException | None) -> str:
    return str(error).splitlines()[0][:300] if error else ""
