"""portal: S3 access keys and destination policies

Revision ID: 0002_portal
Revises: 0001
Create Date: 2026-11-28 08:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import ecpds.core.models

revision: str = "0002_portal"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "accesskey",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("access_key_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("secret_encrypted", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created", ecpds.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["datauser.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("accesskey", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_accesskey_access_key_id"), ["access_key_id"], unique=True
        )
        batch_op.create_index(batch_op.f("ix_accesskey_user_id"), ["user_id"], unique=False)

    op.create_table(
        "policy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("comment", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("policy", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_policy_name"), ["name"], unique=True)

    op.create_table(
        "policydestination",
        sa.Column("policy_id", sa.Integer(), nullable=False),
        sa.Column("destination_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["destination_id"], ["destination.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["policy_id"], ["policy.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("policy_id", "destination_id"),
    )
    op.create_table(
        "datauserpolicy",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["policy_id"], ["policy.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["datauser.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "policy_id"),
    )


def downgrade() -> None:
    op.drop_table("datauserpolicy")
    op.drop_table("policydestination")
    with op.batch_alter_table("policy", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_policy_name"))
    op.drop_table("policy")
    with op.batch_alter_table("accesskey", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_accesskey_user_id"))
        batch_op.drop_index(batch_op.f("ix_accesskey_access_key_id"))
    op.drop_table("accesskey")
