"""The default matches each image's contrast to the training images' (``light`` contrast,
candidate C18; BENCHMARKS.md, "Presets").

Up: every variant and model configuration without the setting (those stored before it
existed) gets ``"light": "keep"``, what it was resolved and trained with, so that the new
default changes neither what an existing variant trains next nor what a stored model says it
was trained with. Down: nothing to undo (revision 0011's code reads the explicit keep as it
read the missing setting). Data only; no schema.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ADDED = "light"
BEFORE = "keep"  # what every configuration before this revision did without the setting

variant = sa.table("variant", sa.column("id", sa.Integer), sa.column("settings", sa.JSON))
model = sa.table("model", sa.column("id", sa.Integer), sa.column("config", sa.JSON))


def _with_light(settings: dict[str, Any]) -> dict[str, Any]:
    return settings if ADDED in settings else {**settings, ADDED: BEFORE}


def _rewrite(table: sa.TableClause, column: str) -> None:
    connection = op.get_bind()
    for row_id, value in connection.execute(sa.select(table.c.id, table.c[column])).all():
        new = _with_light(dict(value or {}))
        if new != value:
            connection.execute(sa.update(table).where(table.c.id == row_id)
                               .values({column: new}))


def upgrade() -> None:
    _rewrite(variant, "settings")
    _rewrite(model, "config")


def downgrade() -> None:
    """Nothing: revision 0011's code reads the explicit keep as it read the missing setting."""
