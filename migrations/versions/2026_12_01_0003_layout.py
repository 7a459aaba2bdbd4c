"""Regions of interest and ignore masks: a layout per variant, and the one each model used.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: rows from before have no layout (the whole frame judged, nothing ignored).
    with op.batch_alter_table("variant") as batch:
        batch.add_column(sa.Column("layout", sa.JSON(), nullable=True))
    with op.batch_alter_table("model") as batch:
        batch.add_column(sa.Column("layout", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model") as batch:
        batch.drop_column("layout")
    with op.batch_alter_table("variant") as batch:
        batch.drop_column("layout")
