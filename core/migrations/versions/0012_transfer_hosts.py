"""transfer hosts: an index per destination, host, status and finish time

The console's host states (running, retrying and failed transfers of each host of a
destination, and its last delivery) read it with one range or one seek per host instead
of every transfer of the destination.

Revision ID: 0012_transfer_hosts
Revises: 0011_console
Create Date: 2026-12-07 12:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012_transfer_hosts"
down_revision: str | None = "0011_console"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ["destination_id", "host_id", "status", "finished"]


def upgrade() -> None:
    op.create_index("ix_datatransfer_host", "datatransfer", COLUMNS)


def downgrade() -> None:
    op.drop_index("ix_datatransfer_host", table_name="datatransfer")
