"""Threshold views: allowed-variation views of each training image held out only to set the
threshold (``threshold_views``; BENCHMARKS.md, "Tolerance of allowed variations").

Up: every variant and model configuration without the setting gets ``"threshold_views": 0``,
what they were resolved and trained with, so that no later default changes what a variant
trains next or what a stored model says it was trained with. Down: the setting is dropped
(revision 0007's code refuses settings it does not know). Data only; no schema.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ADDED = "threshold_views"
BEFORE = 0  # what every configuration before this revision did

variant = sa.table("variant", sa.column("id", sa.Integer), sa.column("settings", sa.JSON))
model = sa.table("model", sa.column("id", sa.Integer), sa.column("config", sa.JSON))


def _rewrite(table: sa.TableClause, column: str,
             change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    connection = op.get_bind()
    for row_id, value in connection.execute(sa.select(table.c.id, table.c[column])).all():
        new = change(dict(value or {}))
        if new != value:
            connection.execute(sa.update(table).where(table.c.id == row_id)
                               .values({column: new}))


def _with_views(settings: dict[str, Any]) -> dict[str, Any]:
    return settings if ADDED in settings else {**settings, ADDED: BEFORE}


def _as_0007(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k != ADDED}


def upgrade() -> None:
    _rewrite(variant, "settings", _with_views)
    _rewrite(model, "config", _with_views)


def downgrade() -> None:
    _rewrite(variant, "settings", _as_0007)
    _rewrite(model, "config", _as_0007)
