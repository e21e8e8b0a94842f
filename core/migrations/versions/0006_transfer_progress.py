"""transfer progress: when it was last written, the partial upload to resume, sha256/sha512
(and the destination's `checksums` that asks for them)

Revision ID: 0006_transfer_progress
Revises: 0005_transfers_outlive
Create Date: 2026-12-06 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ecpds.core.models

revision: str = "0006_transfer_progress"
down_revision: str | None = "0005_transfers_outlive"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Nullable columns, added in place (no table copy on SQLite).
COLUMNS = ("progress_at", "partial_target", "sha256", "sha512")


def upgrade() -> None:
    op.add_column(
        "datatransfer",
        sa.Column("progress_at", ecpds.core.models.UTCDateTime(timezone=True), nullable=True),
    )
    for name in COLUMNS[1:]:
        op.add_column("datatransfer", sa.Column(name, sa.String(), nullable=True))
    op.add_column(
        "destination",
        sa.Column("checksums", sa.JSON(), nullable=False, server_default=sa.text("'[]'")),
    )


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place too; a batch would rebuild the table.
    op.drop_column("destination", "checksums")
    for name in reversed(COLUMNS):
        op.drop_column("datatransfer", name)
