"""The default preset is ``accurate``: ``balanced`` (EfficientNet-Lite2) won the screening of
every declared candidate, the slower ones included, so it took the name ``accurate`` and the
ViT-S configuration that held that name left the presets (BENCHMARKS.md, "Presets").

Up: variants and model configurations on ``balanced`` name ``accurate`` (the same settings:
a variant stores every setting resolved). Those on the old ``accurate`` keep the name and
their stored ViT-S backbone, which now reads as a setting of their own: nothing resolves
differently. Down: ``accurate`` with EfficientNet-Lite2 is ``balanced`` again. Data only.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RENAMED = ("balanced", "accurate")  # (before, after)
ITS_BACKBONE = "efficientnet_lite2"

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


def _renamed(settings: dict[str, Any]) -> dict[str, Any]:
    before, after = RENAMED
    return {**settings, "preset": after} if settings.get("preset") == before else settings


def _as_0006(settings: dict[str, Any]) -> dict[str, Any]:
    before, after = RENAMED
    if settings.get("preset") == after and settings.get("backbone") == ITS_BACKBONE:
        return {**settings, "preset": before}
    return settings


def upgrade() -> None:
    _rewrite(variant, "settings", _renamed)
    _rewrite(model, "config", _renamed)


def downgrade() -> None:
    _rewrite(variant, "settings", _as_0006)
    _rewrite(model, "config", _as_0006)
