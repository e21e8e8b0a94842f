"""acquisition: hosts' acquisition settings, acquired files' keys, unsettled files, runs

Revision ID: 0008_acquisition
Revises: 0007_folders
Create Date: 2026-12-07 01:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import ecpds.core.models

revision: str = "0008_acquisition"
down_revision: str | None = "0007_folders"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("host") as batch:
        batch.add_column(sa.Column("acquisition", sa.JSON(), nullable=True))
    op.create_table(
        "acquiredfile",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("destination_id", sa.Integer(), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("target", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=True),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime", ecpds.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("data_file_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("acquired", ecpds.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delete_original", sa.Boolean(), nullable=False),
        sa.Column("original_deleted", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["destination_id"], ["destination.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["host_id"], ["host.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("destination_id", "key", name="uq_acquiredfile_key"),
    )
    op.create_index("ix_acquiredfile_target", "acquiredfile", ["destination_id", "target"])
    op.create_index("ix_acquiredfile_data_file_id", "acquiredfile", ["data_file_id"])
    op.create_index("ix_acquiredfile_run_id", "acquiredfile", ["run_id"])
    op.create_table(
        "acquisitionseen",
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime", ecpds.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("seen", ecpds.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["host_id"], ["host.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("host_id", "path"),
    )
    op.create_table(
        "acquisitionrun",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("destination", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("started", ecpds.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished", ecpds.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("duration", sa.Float(), nullable=True),
        sa.Column("found", sa.Integer(), nullable=False),
        sa.Column("new", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=True),
        sa.Column("fetched", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("workflow_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_acquisitionrun_host", "acquisitionrun", ["host"])
    op.create_index("ix_acquisitionrun_destination", "acquisitionrun", ["destination"])


def downgrade() -> None:
    op.drop_table("acquisitionrun")
    op.drop_table("acquisitionseen")
    op.drop_table("acquiredfile")
    with op.batch_alter_table("host") as batch:
        batch.drop_column("acquisition")
