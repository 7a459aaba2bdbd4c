"""EfficientNet-Lite2 works at 384 px by default (candidate C15; BENCHMARKS.md, "Presets").

A stored ``resolution`` of null means "the backbone's own", which was 288 for
EfficientNet-Lite2 until this release. Up: every variant and model configuration on that
backbone with a null resolution records 288, what it resolved and trained with, so that the
new default changes neither what an existing variant trains next nor what a stored model
says it was trained with. Down: those 288s read as null again (the backbone's own under
revision 0008's code: the same 288). Data only; no schema.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BACKBONE = "efficientnet_lite2"
BEFORE = 288  # the backbone's own resolution before this revision

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


def _resolved(settings: dict[str, Any]) -> dict[str, Any]:
    if settings.get("backbone") == BACKBONE and settings.get("resolution") is None:
        return {**settings, "resolution": BEFORE}
    return settings


def _as_0008(settings: dict[str, Any]) -> dict[str, Any]:
    if settings.get("backbone") == BACKBONE and settings.get("resolution") == BEFORE:
        return {**settings, "resolution": None}
    return settings


def upgrade() -> None:
    _rewrite(variant, "settings", _resolved)
    _rewrite(model, "config", _resolved)


def downgrade() -> None:
    _rewrite(variant, "settings", _as_0008)
    _rewrite(model, "config", _as_0008)
