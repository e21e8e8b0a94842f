"""inventory: indexes for the console's data files (newest first) and a host's transfers

Revision ID: 0012_inventory
Revises: 0011_console
Create Date: 2026-12-07 12:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012_inventory"
down_revision: str | None = "0011_console"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_datafile_created", "datafile", ["created"])
    op.create_index("ix_datatransfer_host", "datatransfer", ["host_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_datatransfer_host", table_name="datatransfer")
    op.drop_index("ix_datafile_created", table_name="datafile")
