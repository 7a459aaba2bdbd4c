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

from app.db.stored_settings import add_missing_setting

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_missing_setting("edge_reach", "finest")  # what every configuration before did


def downgrade() -> None:
    """Nothing: revision 0010's code reads the explicit finest reach as it read none."""
