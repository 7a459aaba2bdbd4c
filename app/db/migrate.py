"""Apply Alembic migrations from code: the service upgrades its database at start-up.

``python -m app.db.migrate --wait 60`` is the container's start-up step (scripts/entrypoint.sh):
wait until the database answers, then ``upgrade head``. Replicas starting together are safe:
the migration takes a lock (see migrations/env.py), so one migrates and the others find head.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

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


def downgrade_to_base(database_url: str) -> None:
    """Remove every table Alembic created (for tests of reversibility)."""
    command.downgrade(alembic_config(database_url), "base")


def wait_for_database(database_url: str, timeout_s: float, interval_s: float = 1.0) -> None:
    """Return once ``SELECT 1`` succeeds; ``TimeoutError`` naming the last error otherwise.
    (A database container reports healthy a little before it accepts every connection, and
    on a restart the API may well be up first.)"""
    deadline = time.monotonic() + timeout_s
    engine = create_engine(database_url, pool_pre_ping=True, connect_args=(
        {"connect_timeout": max(1, int(interval_s * 3))}
        if make_url(database_url).get_backend_name() == "postgresql" else {}))
    shown = make_url(database_url).render_as_string(hide_password=True)
    attempt = 0
    try:
        while True:
            attempt += 1
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                log.info("database %s answers (attempt %d)", shown, attempt)
                return
            except SQLAlchemyError as exc:
                reason = str(exc).splitlines()[0][:300]
                if time.monotonic() + interval_s > deadline:
                    raise TimeoutError(f"database {shown} did not answer within {timeout_s:g} s: "
                                       f"{reason}") from None
                log.info("waiting for database %s (attempt %d): %s", shown, attempt, reason)
                time.sleep(interval_s)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """``python -m app.db.migrate [--wait SECONDS]``: (wait, then) upgrade to head."""
    parser = argparse.ArgumentParser(prog="python -m app.db.migrate", description=main.__doc__)
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long for the database to answer first")
    args = parser.parse_args(argv)

    from app.cli import print_settings_error
    from app.logs import configure_logging
    from app.settings import SettingsError, get_settings

    try:
        settings = get_settings()
    except SettingsError as exc:
        print_settings_error(exc)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.wait > 0:
            wait_for_database(settings.database_url, args.wait)
        upgrade_to_head(settings.database_url)
    except (TimeoutError, SQLAlchemyError, RuntimeError) as exc:
        log.error("migration failed: %s", exc)
        return 1
    log.info("database schema at head")
    return 0


if __name__ == "__main__":
    sys.exit(main())
