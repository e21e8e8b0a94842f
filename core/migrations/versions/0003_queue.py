"""queue: the catalog is the dissemination queue (retry time, partial indexes)

Revision ID: 0003_queue
Revises: 0002_portal
Create Date: 2026-12-02 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ecpds.core.models

revision: str = "0003_queue"
down_revision: str | None = "0002_portal"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported: a migration keeps the schema of its day.
QUEUED_SQL = "datatransfer.status IN ('WAIT', 'SCHE', 'RETR') AND NOT datatransfer.deleted"
# Plain ALTER TABLE and CREATE INDEX, not a batch: SQLite adds a nullable column in place,
# and a catalog with millions of transfers is not copied.
INDEXES = {
    "ix_datatransfer_queue": ["destination_id", "priority", "queued", "id"],
    "ix_datatransfer_queue_scheduled": ["destination_id", "scheduled"],
    "ix_datatransfer_queue_retry": ["destination_id", "retry_at"],
}


def upgrade() -> None:
    op.add_column(
        "datatransfer",
        sa.Column("retry_at", ecpds.core.models.UTCDateTime(timezone=True), nullable=True),
    )
    for name, columns in INDEXES.items():
        op.create_index(
            name,
            "datatransfer",
            columns,
            unique=False,
            sqlite_where=sa.text(QUEUED_SQL),
            postgresql_where=sa.text(QUEUED_SQL),
        )


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="datatransfer")
    with op.batch_alter_table("datatransfer", schema=None) as batch_op:
        batch_op.drop_column("retry_at")
