"""notifications: destinations' notification settings, the outbox, the broker's retained
messages, and data files' SHA-512 for WIS2 messages

The destination's loose mqtt_* columns become one validated `notification` setting;
their topic, QoS, retain flag and broker carry over, with `notify` left at "none" (they
never published anything).

Revision ID: 0009_notifications
Revises: 0008_acquisition
Create Date: 2026-12-07 05:20:00
"""

from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
import sqlmodel
from alembic import op

import ecpds.core.models

revision: str = "0009_notifications"
down_revision: str | None = "0008_acquisition"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _without_login(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def upgrade() -> None:
    with op.batch_alter_table("destination") as batch:
        batch.add_column(sa.Column("notification", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column(
                "notification_password_encrypted",
                sqlmodel.sql.sqltypes.AutoString(),
                nullable=True,
            )
        )
    destination = sa.table(
        "destination",
        sa.column("id", sa.Integer()),
        sa.column("mqtt_topic", sa.String()),
        sa.column("mqtt_retain", sa.Boolean()),
        sa.column("mqtt_qos", sa.Integer()),
        sa.column("mqtt_broker_url", sa.String()),
        sa.column("notification", sa.JSON()),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(
            destination.c.id,
            destination.c.mqtt_topic,
            destination.c.mqtt_retain,
            destination.c.mqtt_qos,
            destination.c.mqtt_broker_url,
        ).where(destination.c.mqtt_topic.is_not(None))
    ).all()
    for id_, topic, retain, qos, broker in rows:
        setting = {
            "notify": "none",
            "topic": f"{topic.rstrip('/')}/{{target}}",
            "qos": qos or 0,
            "retain": bool(retain),
            "broker": _without_login(broker) if broker else "embedded",
        }
        connection.execute(
            sa.update(destination).where(destination.c.id == id_).values(notification=setting)
        )
    with op.batch_alter_table("destination") as batch:
        for column in ("mqtt_topic", "mqtt_retain", "mqtt_qos", "mqtt_payload", "mqtt_broker_url"):
            batch.drop_column(column)
    with op.batch_alter_table("datafile") as batch:
        batch.add_column(sa.Column("sha512", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    op.create_table(
        "notification",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("event", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("destination", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("data_file_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("transfer_id", sa.BigInteger(), nullable=True),
        sa.Column("broker", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("protocol", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("topic", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("qos", sa.Integer(), nullable=False),
        sa.Column("retain", sa.Boolean(), nullable=False),
        sa.Column("content_type", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("expires", ecpds.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created", ecpds.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("pending", sa.Boolean(), nullable=False),
        sa.Column("published", ecpds.core.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt", ecpds.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id"),
    )
    op.create_index("ix_notification_pending", "notification", ["pending", "next_attempt"])
    op.create_index("ix_notification_history", "notification", ["destination", "created"])
    op.create_index("ix_notification_created", "notification", ["created"])
    op.create_table(
        "retainedmessage",
        sa.Column("topic", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("qos", sa.Integer(), nullable=False),
        sa.Column("updated", ecpds.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("topic"),
    )


def downgrade() -> None:
    op.drop_table("retainedmessage")
    op.drop_table("notification")
    with op.batch_alter_table("datafile") as batch:
        batch.drop_column("sha512")
    with op.batch_alter_table("destination") as batch:
        batch.add_column(sa.Column("mqtt_topic", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(
            sa.Column("mqtt_retain", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("mqtt_qos", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("mqtt_payload", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
        batch.add_column(
            sa.Column("mqtt_broker_url", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
        batch.drop_column("notification_password_encrypted")
        batch.drop_column("notification")
