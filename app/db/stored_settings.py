"""Data migrations of the detector settings stored in variants and model configurations.

A release that adds a setting, or changes a default, writes into every stored configuration
without the setting the value it was resolved and trained with, so that neither what an
existing variant trains next nor what a stored model says it was trained with changes.
Migrations from revision 0011 on call this; what it does is part of them, so it never
changes (a new kind of rewrite is a new function).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

VARIANT = sa.table("variant", sa.column("id", sa.Integer), sa.column("settings", sa.JSON))
MODEL = sa.table("model", sa.column("id", sa.Integer), sa.column("config", sa.JSON))


def rewrite_stored_settings(change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Apply ``change`` to every variant's settings and every model's configuration, writing
    back the rows it changed (in the migration's connection and transaction)."""
    connection = op.get_bind()
    for table, column in ((VARIANT, "settings"), (MODEL, "config")):
        rows = connection.execute(sa.select(table.c.id, table.c[column])).all()
        for row_id, value in rows:
            new = change(dict(value or {}))
            if new != value:
                connection.execute(sa.update(table).where(table.c.id == row_id)
                                   .values({column: new}))


def add_missing_setting(name: str, before: Any) -> None:
    """Write ``name: before`` into every stored configuration that lacks ``name``."""
    rewrite_stored_settings(
        lambda settings: settings if name in settings else {**settings, name: before})
