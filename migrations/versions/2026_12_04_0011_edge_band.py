"""The margin's reach counts each layer's patch neighbourhood at that layer's stride: the
EfficientNets' edge band is four cells where it was three (``edge_band`` null, candidate C17;
BENCHMARKS.md, "Presets").

Up: every variant and model configuration on an EfficientNet without the setting gets the
band it was resolved and trained with, written out (``2 x border + 1`` cells: the margin's
``border`` multiples of 16 px on the stride-8 grid, null meaning 1, and one more), so that
the new reach changes neither what an existing variant trains next nor what a stored model
says it was trained with. Other backbones have one stride: their reach is unchanged and so
is their configuration. Down: nothing to undo (revision 0010's code reads an explicit band
of what it computed as it read none). Data only; no schema.

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

ADDED = "edge_band"
TWO_STRIDES = ("efficientnet_lite0", "efficientnet_lite2")  # stride 8 and 16 layers
DEFAULT_BACKBONE = "efficientnet_lite2"  # what a configuration without one resolves to

variant = sa.table("variant", sa.column("id", sa.Integer), sa.column("settings", sa.JSON))
model = sa.table("model", sa.column("id", sa.Integer), sa.column("config", sa.JSON))


def _with_band(settings: dict[str, Any]) -> dict[str, Any]:
    if ADDED in settings or settings.get("backbone", DEFAULT_BACKBONE) not in TWO_STRIDES:
        return settings
    border = settings.get("border")
    return {**settings, ADDED: 2 * (1 if border is None else int(border)) + 1}


def _rewrite(table: sa.TableClause, column: str) -> None:
    connection = op.get_bind()
    for row_id, value in connection.execute(sa.select(table.c.id, table.c[column])).all():
        new = _with_band(dict(value or {}))
        if new != value:
            connection.execute(sa.update(table).where(table.c.id == row_id)
                               .values({column: new}))


def upgrade() -> None:
    _rewrite(variant, "settings")
    _rewrite(model, "config")


def downgrade() -> None:
    """Nothing: revision 0010's code reads the explicit band as the one it computed."""
