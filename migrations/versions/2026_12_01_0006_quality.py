"""Quality reports: every model stores the one computed from its training images, and a
variant may keep weaker models from activating themselves.

Existing variants get ``"min_expected_auroc": 0``: they activated every finished model before
this revision, and a later release's defaults never change what a variant does (new variants
get the gate's default). Down: the settings this revision added are dropped from variants and
model configurations (revision 0005's code refuses settings it does not know), ``auto``
becomes ``fast``, and the column goes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ADDED = ("min_expected_auroc", "auto_latency_budget", "background")

variant = sa.table("variant", sa.column("id", sa.Integer), sa.column("settings", sa.JSON))
model = sa.table("model", sa.column("id", sa.Integer), sa.column("config", sa.JSON))


def _rewrite(table: sa.TableClause, column: str, change: Any) -> None:
    connection = op.get_bind()
    for row_id, value in connection.execute(sa.select(table.c.id, table.c[column])).all():
        new = change(dict(value or {}))
        if new != value:
            connection.execute(sa.update(table).where(table.c.id == row_id)
                               .values({column: new}))


def _gate_off(settings: dict[str, Any]) -> dict[str, Any]:
    return settings if "min_expected_auroc" in settings else {**settings,
                                                              "min_expected_auroc": 0.0}


def _as_0005(settings: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in settings.items() if k not in ADDED}
    if kept.get("preset") == "auto":
        kept["preset"] = "fast"
    return kept


def upgrade() -> None:
    # Nullable: models trained before have no report.
    with op.batch_alter_table("model") as batch:
        batch.add_column(sa.Column("quality", sa.JSON(), nullable=True))
    _rewrite(variant, "settings", _gate_off)


def downgrade() -> None:
    _rewrite(variant, "settings", _as_0005)
    _rewrite(model, "config", _as_0005)
    with op.batch_alter_table("model") as batch:
        batch.drop_column("quality")
