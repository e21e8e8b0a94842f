"""inventory: indexes for the console's data files (newest first, and of some destinations)
and a host's transfers

The index of a transfer's data file gains its destination, so that whether a file has a
transfer to some destinations is read from the index alone.

Revision ID: 0013_inventory
Revises: 0012_transfer_hosts
Create Date: 2026-12-07 12:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013_inventory"
down_revision: str | None = "0012_transfer_hosts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_datafile_created", "datafile", ["created"])
    op.create_index("ix_datatransfer_host_recent", "datatransfer", ["host_id", "id"])
    op.create_index("ix_datatransfer_file", "datatransfer", ["data_file_id", "destination_id"])
    op.drop_index("ix_datatransfer_data_file_id", table_name="datatransfer")


def downgrade() -> None:
    op.create_index("ix_datatransfer_data_file_id", "datatransfer", ["data_file_id"])
    op.drop_index("ix_datatransfer_file", table_name="datatransfer")
    op.drop_index("ix_datatransfer_host_recent", table_name="datatransfer")
    op.drop_index("ix_datafile_created", table_name="datafile")
