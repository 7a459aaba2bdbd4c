"""Inspection records with their kept images, a retention policy per variant, and the
operator role.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("variant") as batch:
        batch.add_column(sa.Column("records", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("record_image_bytes", sa.BigInteger(), nullable=False,
                                   server_default="0"))
    op.create_table(
        "inspection_record",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("normalized_score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("is_anomalous", sa.Boolean(), nullable=False),
        sa.Column("regions", sa.JSON(), nullable=False),
        sa.Column("regions_of_interest", sa.JSON(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("part_id", sa.String(length=128), nullable=True),
        sa.Column("station", sa.String(length=64), nullable=True),
        sa.Column("lot", sa.String(length=64), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("image_kept", sa.Boolean(), nullable=False),
        sa.Column("feedback", sa.String(length=16), nullable=True),
        sa.Column("feedback_note", sa.Text(), nullable=True),
        sa.Column("feedback_by", sa.String(length=63), nullable=True),
        sa.Column("feedback_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint("feedback IS NULL OR feedback IN ('good', 'defect', 'missed')",
                           name=op.f("ck_inspection_record_feedback")),
        sa.ForeignKeyConstraint(["variant_id"], ["variant.id"], ondelete="CASCADE",
                                name=op.f("fk_inspection_record_variant_id_variant")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inspection_record")),
        sqlite_autoincrement=True,  # ids never reused
    )
    for name, columns in (
        ("ix_inspection_record_variant_id_id", ["variant_id", "id"]),
        ("ix_inspection_record_created_at", ["created_at"]),
        ("ix_inspection_record_anomalous", ["is_anomalous", "id"]),
        ("ix_inspection_record_variant_anomalous", ["variant_id", "is_anomalous", "id"]),
        ("ix_inspection_record_variant_version", ["variant_id", "model_version", "id"]),
        ("ix_inspection_record_part_id", ["part_id", "id"]),
        ("ix_inspection_record_station", ["station", "is_anomalous", "id"]),
        ("ix_inspection_record_feedback", ["feedback", "id"]),
    ):
        op.create_index(name, "inspection_record", columns)
    op.create_table(
        "record_image",
        sa.Column("record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["record_id"], ["inspection_record.id"], ondelete="CASCADE",
                                name=op.f("fk_record_image_record_id_inspection_record")),
        sa.ForeignKeyConstraint(["variant_id"], ["variant.id"], ondelete="CASCADE",
                                name=op.f("fk_record_image_variant_id_variant")),
        sa.PrimaryKeyConstraint("record_id", name=op.f("pk_record_image")),
    )
    op.create_index("ix_record_image_variant_id_created_at", "record_image",
                    ["variant_id", "created_at"])
    with op.batch_alter_table("api_key") as batch:
        batch.drop_constraint(op.f("ck_api_key_role"), type_="check")
        batch.create_check_constraint("role", "role IN ('admin', 'operator', 'inspector')")


def downgrade() -> None:
    # No operator role below this revision: its keys become inspector keys (they keep
    # inspecting and reading; records go anyway).
    op.execute("UPDATE api_key SET role = 'inspector' WHERE role = 'operator'")
    with op.batch_alter_table("api_key") as batch:
        batch.drop_constraint(op.f("ck_api_key_role"), type_="check")
        batch.create_check_constraint("role", "role IN ('admin', 'inspector')")
    op.drop_table("record_image")
    op.drop_table("inspection_record")
    with op.batch_alter_table("variant") as batch:
        batch.drop_column("record_image_bytes")
        batch.drop_column("records")
