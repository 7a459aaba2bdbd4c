"""Presets: every variant and model records the preset its settings were resolved from.

Every existing variant and model had the configuration of today's ``fast`` preset: rows
without a preset get ``"preset": "fast"``. A variant still stores every setting resolved, so
nothing resolves differently. Down: the keys revision 0004's code does not know are dropped
(it refuses a model configuration with unknown settings). Data only; no schema.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here: the settings revision 0004's code knows, with the defaults it resolved them to.
DEFAULTS_0004: dict[str, Any] = {
    "backbone": "efficientnet_lite0", "resolution": None, "resize": "fixed_scale",
    "max_aspect": 4.0, "border": None, "edge_weight": 0.5, "coreset_ratio": 0.1,
    "min_bank_size": 2048, "max_bank_size": 16384, "target_false_reject_rate": 0.01,
    "augment": "none", "variation_views": 0, "score_top_fraction": 0.0,
    "min_defect_area_px": 0, "blur_sigma": 4.0, "precision": "float32",
}

variant = sa.table("variant", sa.column("id", sa.Integer), sa.column("settings", sa.JSON))
model = sa.table("model", sa.column("id", sa.Integer), sa.column("config", sa.JSON))


def _rewrite(table: sa.TableClause, column: str, change: Any) -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(table.c.id, table.c[column])).all()
    for row_id, value in rows:
        new = change(dict(value or {}))
        if new != value:
            connection.execute(sa.update(table).where(table.c.id == row_id)
                               .values({column: new}))


def _with_preset(settings: dict[str, Any]) -> dict[str, Any]:
    return settings if "preset" in settings else {"preset": "fast", **settings}


def _as_0004(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k in DEFAULTS_0004}


def upgrade() -> None:
    _rewrite(variant, "settings", _with_preset)
    _rewrite(model, "config", _with_preset)


def downgrade() -> None:
    _rewrite(variant, "settings", _as_0004)
    _rewrite(model, "config", _as_0004)
