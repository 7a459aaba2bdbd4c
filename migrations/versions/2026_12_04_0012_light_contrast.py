"""The default matches each image's contrast to the training images' (``light`` contrast,
candidate C18; BENCHMARKS.md, "Presets").

Up: every variant and model configuration without the setting (those stored before it
existed) gets ``"light": "keep"``, what it was resolved and trained with, so that the new
default changes neither what an existing variant trains next nor what a stored model says it
was trained with. Down: nothing to undo (revision 0011's code reads the explicit keep as it
read the missing setting). Data only; no schema.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from app.db.stored_settings import add_missing_setting

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_missing_setting("light", "keep")  # what a configuration without it did


def downgrade() -> None:
    """Nothing: revision 0011's code reads the explicit keep as it read the missing setting."""
