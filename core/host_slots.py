"""A host's `max_connections` across every destination that sends to it.

Each destination's scheduler keeps to the limit among its own transfers; a host shared by
several destinations needs one count. A send takes a slot (a `HostSlot` row) before it
connects and gives it back when it ends; while it runs it renews the slot. A slot not
renewed for `LEASE` seconds belongs to a worker that died, and no longer counts: a
killed worker or scheduler never keeps a host's connections.

Taking a slot is one short transaction, serialised per host: on PostgreSQL by locking
the host's row, on SQLite by the write lock its first statement takes. The slot is
written first and counted after, so two senders never both see the last free one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from ecpds.core.models import Host, HostSlot

LEASE = 60.0  # seconds a slot counts without being renewed
RENEW_EVERY = LEASE / 4


def take(engine: Engine, *, host_id: int, transfer_id: int, limit: int) -> int | None:
    """Take a slot on the host for the transfer (again, if it holds one already); None if
    the host has `limit` slots in use by others, else the number in use with this one."""
    now = datetime.now(UTC)
    with Session(engine) as session:
        postgresql = engine.dialect.name == "postgresql"
        if postgresql:
            session.execute(select(Host.id).where(Host.id == host_id).with_for_update())
        insert = pg_insert if postgresql else sqlite_insert
        session.execute(
            insert(HostSlot)
            .values(host_id=host_id, transfer_id=transfer_id, renewed=now)
            .on_conflict_do_update(index_elements=["host_id", "transfer_id"], set_={"renewed": now})
        )
        in_use = session.execute(
            select(func.count()).where(
                col(HostSlot.host_id) == host_id,
                col(HostSlot.renewed) > now - timedelta(seconds=LEASE),
            )
        ).scalar_one()
        if in_use > limit:
            session.rollback()
            return None
        session.commit()
        return int(in_use)


def renew(engine: Engine, *, host_id: int, transfer_id: int) -> None:
    with Session(engine) as session:
        session.execute(
            update(HostSlot)
            .where(col(HostSlot.host_id) == host_id, col(HostSlot.transfer_id) == transfer_id)
            .values(renewed=datetime.now(UTC))
        )
        session.commit()


def release(engine: Engine, *, host_id: int, transfer_id: int) -> None:
    """Give the slot back; and clear the host's slots whose lease ran out long ago."""
    stale = datetime.now(UTC) - timedelta(seconds=10 * LEASE)
    with Session(engine) as session:
        session.execute(
            delete(HostSlot).where(
                col(HostSlot.host_id) == host_id,
                (col(HostSlot.transfer_id) == transfer_id) | (col(HostSlot.renewed) < stale),
            )
        )
        session.commit()


def in_use(engine: Engine, *, host_id: int) -> int:
    """Slots the host has in use now (for the console and tests)."""
    since = datetime.now(UTC) - timedelta(seconds=LEASE)
    with Session(engine) as session:
        return int(
            session.execute(
                select(func.count()).where(
                    col(HostSlot.host_id) == host_id, col(HostSlot.renewed) > since
                )
            ).scalar_one()
        )
