"""Initial schema: variant, image, model, model_artifact.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "variant",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("active_model_id", sa.Integer(), nullable=True),
        sa.Column("last_model_version", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_variant")),
        sa.UniqueConstraint("name", name=op.f("uq_variant_name")),
    )
    op.create_table(
        "image",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=16), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=True),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("label IN ('good', 'defect')", name=op.f("ck_image_label")),
        sa.ForeignKeyConstraint(["variant_id"], ["variant.id"], ondelete="CASCADE",
                                name=op.f("fk_image_variant_id_variant")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image")),
        sa.UniqueConstraint("variant_id", "sha256", name=op.f("uq_image_variant_id_sha256")),
    )
    op.create_index("ix_image_variant_id_label", "image", ["variant_id", "label"])
    op.create_table(
        "model",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("activate", sa.Boolean(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("calibration", sa.JSON(), nullable=True),
        sa.Column("bank_size", sa.Integer(), nullable=True),
        sa.Column("n_good_images", sa.Integer(), nullable=True),
        sa.Column("n_defect_images", sa.Integer(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("heartbeat_at", TIMESTAMP, nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("status IN ('queued', 'running', 'ready', 'failed', 'cancelled')",
                           name=op.f("ck_model_status")),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name=op.f("ck_model_progress")),
        sa.ForeignKeyConstraint(["variant_id"], ["variant.id"], ondelete="CASCADE",
                                name=op.f("fk_model_variant_id_variant")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model")),
        sa.UniqueConstraint("variant_id", "version", name=op.f("uq_model_variant_id_version")),
    )
    op.create_index("ix_model_status", "model", ["status"])
    op.create_table(
        "model_artifact",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("onnx", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["model.id"], ondelete="CASCADE",
                                name=op.f("fk_model_artifact_model_id_model")),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_model_artifact")),
    )
    # variant <-> model reference each other: the second edge is added once both exist
    # (batch mode so that SQLite, which cannot ALTER constraints, rebuilds the table).
    with op.batch_alter_table("variant") as batch:
        batch.create_foreign_key(op.f("fk_variant_active_model_id_model"), "model",
                                 ["active_model_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("variant") as batch:
        batch.drop_constraint(op.f("fk_variant_active_model_id_model"), type_="foreignkey")
    op.drop_table("model_artifact")
    op.drop_index("ix_model_status", table_name="model")
    op.drop_table("model")
    op.drop_index("ix_image_variant_id_label", table_name="image")
    op.drop_table("image")
    op.drop_table("variant")
