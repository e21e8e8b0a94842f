"""transfer hours: indexes for the last day's traffic per destination and hour

The console's charts count transfers queued and delivered (with their bytes) per
destination and hour over the last 24 hours. Each query reads a range of one of these
indexes alone; without them a million transfers take 2.4 s on SQLite and 0.4 s on
PostgreSQL per reading.

Revision ID: 0015_transfer_hours
Revises: 0014_host_slots
Create Date: 2026-12-07 12:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015_transfer_hours"
down_revision: str | None = "0014_host_slots"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_datatransfer_queued", "datatransfer", ["queued", "destination_id"])
    op.create_index(
        "ix_datatransfer_delivered",
        "datatransfer",
        ["finished", "destination_id", "status", "bytes_sent"],
    )


def downgrade() -> None:
    op.drop_index("ix_datatransfer_delivered", table_name="datatransfer")
    op.drop_index("ix_datatransfer_queued", table_name="datatransfer")
