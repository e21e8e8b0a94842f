"""host slots: the connections held on each host, across destinations

Revision ID: 0014_host_slots
Revises: 0013_inventory
Create Date: 2026-12-07 12:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ecpds.core.models

revision: str = "0014_host_slots"
down_revision: str | None = "0013_inventory"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hostslot",
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("transfer_id", sa.Integer(), nullable=False),
        sa.Column("renewed", ecpds.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["host_id"], ["host.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("host_id", "transfer_id"),
    )


def downgrade() -> None:
    op.drop_table("hostslot")
