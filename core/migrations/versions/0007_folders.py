"""folders: the folders data users made in a destination and have not used yet

Revision ID: 0007_folders
Revises: 0006_transfer_progress
Create Date: 2026-12-06 22:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import ecpds.core.models

revision: str = "0007_folders"
down_revision: str | None = "0006_transfer_progress"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "portalfolder",
        sa.Column("destination_id", sa.Integer(), nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created", ecpds.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["destination_id"], ["destination.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("destination_id", "path"),
    )


def downgrade() -> None:
    op.drop_table("portalfolder")
