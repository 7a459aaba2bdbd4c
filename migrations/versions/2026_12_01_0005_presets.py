"""Presets: a variant stores its preset and the settings it gives itself; a model records the
preset its configuration was resolved from.

Before this revision a variant stored every setting resolved, so a preset could not sit under
them. Every existing variant and model had the configuration of today's ``fast`` preset: rows
get ``"preset": "fast"``, and a variant keeps only the values that differ from the defaults of
revision 0004 (the others resolve to the same values from the preset). Data only; no schema.

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

# Frozen here: what the code of revision 0004 resolved omitted settings to.
DEFAULTS_0004: dict[str, Any] = {
    "backbone": "efficientnet_lite0", "resolution": None, "resize": "fixed_scale",
    "max_aspect": 4.0, "border": None, "edge_weight": 0.5, "coreset_ratio": 0.1,
    "min_bank_size": 2048, "max_bank_size": 16384, "target_false_reject_rate": 0.01,
    "augment": "none", "variation_views": 0, "score_top_fraction": 0.0,
    "min_defect_area_px": 0, "blur_sigma": 4.0, "precision": "float32",
}
# And the presets of this revision, for the way down.
PRESETS_0005: dict[str, dict[str, Any]] = {
    "fast": {"backbone": "efficientnet_lite0"},
    "accurate": {"backbone": "vit_small_l6_l9"},
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


def _explicit(settings: dict[str, Any]) -> dict[str, Any]:
    if "preset" in settings:
        return settings
    own = {k: v for k, v in settings.items()
           if k not in DEFAULTS_0004 or DEFAULTS_0004[k] != v}
    return {"preset": "fast", **own}


def _resolved(settings: dict[str, Any]) -> dict[str, Any]:
    preset = settings.pop("preset", "fast")
    return {**DEFAULTS_0004, **PRESETS_0005.get(preset, {}), **settings}


def _with_preset(config: dict[str, Any]) -> dict[str, Any]:
    return config if "preset" in config else {"preset": "fast", **config}


def _without_preset(config: dict[str, Any]) -> dict[str, Any]:
    config.pop("preset", None)
    return config


def upgrade() -> None:
    _rewrite(variant, "settings", _explicit)
    _rewrite(model, "config", _with_preset)


def downgrade() -> None:
    _rewrite(variant, "settings", _resolved)
    _rewrite(model, "config", _without_preset)
