"""console: expected products and the event log of operations

Revision ID: 0011_console
Revises: 0010_transfer_counts
Create Date: 2026-12-07 10:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import ecpds.core.models

revision: str = "0011_console"
down_revision: str | None = "0010_transfer_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "expectedproduct",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("destination", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("pattern", sa.String(), nullable=False),
        sa.Column("due", sa.String(), nullable=False),
        sa.Column("comment", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_expectedproduct_name", "expectedproduct", ["name"], unique=True)
    op.create_table(
        "operationevent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("time", ecpds.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("user", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("method", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_operationevent_time", "operationevent", ["time"])


def downgrade() -> None:
    op.drop_index("ix_operationevent_time", table_name="operationevent")
    op.drop_table("operationevent")
    op.drop_index("ix_expectedproduct_name", table_name="expectedproduct")
    op.drop_table("expectedproduct")
