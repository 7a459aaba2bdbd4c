"""The default re-lights its JPEG copies by up to 20 % (``jpeg_copy_light`` 0.2, candidate
C16; BENCHMARKS.md, "Presets").

Up: every variant and model configuration without the setting gets ``"jpeg_copy_light":
0.0``, what it was resolved and trained with (the setting arrived with default 0 and no
revision of its own), so that the new default changes neither what an existing variant
trains next nor what a stored model says it was trained with. Down: nothing to undo (0.0
is what revision 0009's code resolves a missing setting to). Data only; no schema.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ADDED = "jpeg_copy_light"
BEFORE = 0.0  # what every configuration before this revision did

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
    """Nothing: revision 0009's code reads the explicit 0.0 as it read the missing setting."""
