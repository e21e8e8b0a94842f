"""transfers outlive their destination, and transfer ids are never reused

Revision ID: 0005_transfers_outlive
Revises: 0003_queue
Create Date: 2026-12-06 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_transfers_outlive"
down_revision: str | None = "0003_queue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported: a migration keeps the schema of its day.
QUEUED_SQL = "datatransfer.status IN ('WAIT', 'SCHE', 'RETR') AND NOT datatransfer.deleted"
INDEXES = {
    "ix_datatransfer_queue": ["destination_id", "priority", "queued", "id"],
    "ix_datatransfer_queue_scheduled": ["destination_id", "scheduled"],
    "ix_datatransfer_queue_retry": ["destination_id", "retry_at"],
}
PG_FOREIGN_KEY = "datatransfer_destination_id_fkey"  # PostgreSQL's name for 0001's key


def _destination_key(ondelete: str, nullable: bool) -> sa.Column:
    return sa.Column(
        "destination_id",
        sa.Integer(),
        sa.ForeignKey("destination.id", ondelete=ondelete),
        nullable=nullable,
    )


def _drop_queue_indexes() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="datatransfer")


def _create_queue_indexes() -> None:
    for name, columns in INDEXES.items():
        op.create_index(
            name,
            "datatransfer",
            columns,
            unique=False,
            sqlite_where=sa.text(QUEUED_SQL),
            postgresql_where=sa.text(QUEUED_SQL),
        )


def upgrade() -> None:
    op.add_column("datatransfer", sa.Column("destination_name", sa.String(), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        # SQLite reuses the highest rowid after a delete unless the table is AUTOINCREMENT,
        # which only a rebuild can add; the same rebuild changes the destination key.
        _drop_queue_indexes()
        with op.batch_alter_table(
            "datatransfer",
            recreate="always",
            reflect_args=[_destination_key("SET NULL", nullable=True)],
            table_kwargs={"sqlite_autoincrement": True},
        ):
            pass
        _create_queue_indexes()
        return
    # PostgreSQL's serial ids come from a sequence and are never reused.
    op.drop_constraint(PG_FOREIGN_KEY, "datatransfer", type_="foreignkey")
    op.alter_column("datatransfer", "destination_id", nullable=True)
    op.create_foreign_key(
        PG_FOREIGN_KEY,
        "datatransfer",
        "destination",
        ["destination_id"],
        ["id"],
        ondelete="SET NULL",
    )


def downgrade() -> None:
    # The transfers of deleted destinations cannot go back under a non-null key.
    op.execute("DELETE FROM datatransfer WHERE destination_id IS NULL")
    if op.get_bind().dialect.name == "sqlite":
        _drop_queue_indexes()
        with op.batch_alter_table(
            "datatransfer",
            recreate="always",
            reflect_args=[_destination_key("CASCADE", nullable=False)],
        ) as batch_op:
            batch_op.drop_column("destination_name")
        _create_queue_indexes()
        return
    op.drop_constraint(PG_FOREIGN_KEY, "datatransfer", type_="foreignkey")
    op.alter_column("datatransfer", "destination_id", nullable=False)
    op.create_foreign_key(
        PG_FOREIGN_KEY,
        "datatransfer",
        "destination",
        ["destination_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.drop_column("datatransfer", "destination_name")
