"""The default's edge band reaches as far as its coarsest layer carries the mirrored margin
(``edge_reach`` coarsest: four cells for the EfficientNets where it was three, candidate C17;
BENCHMARKS.md, "Presets").

Up: every variant and model configuration without the setting gets ``"edge_reach":
"finest"``, the reach it was resolved and trained with for every backbone and margin, so
that the new default changes neither what an existing variant trains next nor what a stored
model says it was trained with. Down: nothing to undo (revision 0010's code computes the
finest layer's reach whatever the configuration says). Data only; no schema.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ADDED = "edge_reach"
BEFORE = "finest"  # what every configuration before this revision did

variant = sa.table("variant", sa.column("id", sa.Integer), sa.column("settings", sa.JSON))
model = sa.table("model", sa.column("id", sa.Integer), sa.column("config", sa.JSON))


def _with_reach(settings: dict[str, Any]) -> dict[str, Any]:
    return settings if ADDED in settings else {**settings, ADDED: BEFORE}


def _rewrite(table: sa.TableClause, column: str) -> None:
    connection = op.get_bind()
    for row_id, value in connection.execute(sa.select(table.c.id, table.c[column])).all():
        new = _with_reach(dict(value or {}))
        if new != value:
            connection.execute(sa.update(table).where(table.c.id == row_id)
                               .values({column: new}))


def upgrade() -> None:
    _rewrite(variant, "settings")
    _rewrite(model, "config")


def downgrade() -> None:
    """Nothing: revision 0010's code reads the explicit finest reach as it read none."""
