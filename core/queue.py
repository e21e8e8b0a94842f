"""The dissemination queue, which is the catalog: what a destination's scheduler starts next.

The transfers that wait (WAIT, SCHE, RETR, not deleted) are the queue. A scheduler holds
only a window of the next ready ones and reads it here, through partial indexes, so a
read costs the same whether 10 or 500,000 transfers wait.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import BigInteger, Integer, String, bindparam, func, literal, text, update
from sqlmodel import Session, col, select

from ecpds.core.engine import EXPIRED, QueuedTransfer, QueueWindow, Wake
from ecpds.core.models import QUEUED_SQL, DataTransfer, Destination, TransferStatus, UTCDateTime

WAITING_COUNT = 10_000  # queue lengths are counted up to this, so a count stays cheap

# SQLite would pick the scheduled-time index for `scheduled <= now` and then sort the whole
# queue; the hint keeps it on the index that is already in start order. PostgreSQL's
# statistics find that index alone.
_READY = """
SELECT id, data_file_id, priority, queued, expires, start_count, requeue_count,
       (SELECT size FROM datafile WHERE datafile.id = datatransfer.data_file_id) AS size
FROM datatransfer {hint}
WHERE destination_id = :destination AND {queued}
  AND scheduled <= :now AND (retry_at IS NULL OR retry_at <= :now)
  AND id NOT IN :exclude
ORDER BY priority, queued, id
LIMIT :limit OFFSET :offset
"""


def next_transfers(
    session: Session,
    *,
    destination_id: int,
    now: datetime,
    limit: int,
    exclude: Collection[int] = (),
    drop_expired: bool = False,
) -> QueueWindow:
    """Up to `limit` ready transfers (scheduled time and retry time passed), not `exclude`d.

    With `drop_expired`, expired ones met on the way are marked STOP instead of returned.
    """
    hint = "INDEXED BY ix_datatransfer_queue" if _dialect(session) == "sqlite" else ""
    ready = (
        text(_READY.format(hint=hint, queued=QUEUED_SQL))
        .bindparams(
            bindparam("now", type_=UTCDateTime()),
            bindparam("exclude", expanding=True, type_=Integer()),
        )
        .columns(
            id=Integer(),
            data_file_id=String(),
            priority=Integer(),
            queued=UTCDateTime(),
            expires=UTCDateTime(),
            start_count=Integer(),
            requeue_count=Integer(),
            size=BigInteger(),
        )
    )
    found: list[QueuedTransfer] = []
    while True:
        asked = limit - len(found)
        rows = session.execute(
            ready,
            {
                "destination": destination_id,
                "now": now,
                "exclude": list(exclude),
                "limit": asked,
                "offset": len(found),
            },
        ).all()
        expired = {row.id for row in rows if drop_expired and row.expires <= now}
        found += [
            QueuedTransfer(
                id=row.id,
                data_file_id=row.data_file_id,
                priority=row.priority,
                queued=row.queued.timestamp(),
                expires=row.expires.timestamp(),
                start_count=row.start_count,
                requeue_count=row.requeue_count,
                size=row.size or 0,
            )
            for row in rows
            if row.id not in expired
        ]
        if expired:
            _stop(session, sorted(expired), now, EXPIRED)
        # The expired ones have left the queue: read on past the ones already found.
        if not expired or len(rows) < asked:
            break
    return QueueWindow(
        transfers=found,
        complete=len(rows) < asked,
        waiting=_count(session, destination_id, exclude),
        next_ready=_next_ready(session, destination_id, now),
    )


def waiting_destinations(session: Session) -> list[tuple[int, str]]:
    """(id, name) of every destination with at least one waiting transfer."""
    waits = (
        select(literal(1))
        .select_from(DataTransfer)
        .where(DataTransfer.destination_id == Destination.id, text(QUEUED_SQL))
        .exists()
    )
    rows = session.exec(select(Destination.id, Destination.name).where(waits)).all()
    return [(did, name) for did, name in rows if did is not None]


def wake_of(session: Session, *, destination_id: int, now: datetime) -> Wake | None:
    """The wake that tells a scheduler about all of its destination's queue.

    Its order is the first ready transfer's (or the first one's, if none is ready), and
    its ready time the earliest at which one may start; None when nothing waits.
    """
    window = next_transfers(session, destination_id=destination_id, now=now, limit=1)
    if window.transfers:
        first = window.transfers[0]
        return Wake(first.priority, first.queued, first.id, now.timestamp())
    if window.next_ready is None:
        return None
    row = session.exec(
        select(DataTransfer.priority, DataTransfer.queued, DataTransfer.id)
        .where(DataTransfer.destination_id == destination_id, text(QUEUED_SQL))
        .order_by(col(DataTransfer.priority), col(DataTransfer.queued), col(DataTransfer.id))
        .limit(1)
    ).first()
    if row is None or row[2] is None:
        return None
    priority, queued, tid = row
    return Wake(priority, queued.timestamp(), tid, window.next_ready)


def clean_expired(
    session: Session, *, destination_id: int, now: datetime, exclude: Collection[int] = ()
) -> None:
    """Stop every waiting transfer of the destination that has expired (an operator's clean)."""
    ids = session.exec(
        select(DataTransfer.id).where(
            DataTransfer.destination_id == destination_id,
            text(QUEUED_SQL),
            col(DataTransfer.expires) <= now,
            col(DataTransfer.id).not_in(list(exclude)),
        )
    ).all()
    _stop(session, [i for i in ids if i is not None], now, "expired")


def clear_retry_times(session: Session, *, destination_id: int) -> None:
    """Let every waiting transfer of the destination start at once (a restart)."""
    session.execute(
        update(DataTransfer)
        .where(
            col(DataTransfer.destination_id) == destination_id,
            text(QUEUED_SQL),
            col(DataTransfer.retry_at).is_not(None),
        )
        .values(retry_at=None)
    )


def _stop(session: Session, ids: list[int], now: datetime, error: str) -> None:
    if ids:
        session.execute(
            update(DataTransfer)
            .where(col(DataTransfer.id).in_(ids))
            .values(status=TransferStatus.STOP, last_error=error, finished=now, retry_at=None)
        )


def _count(session: Session, destination_id: int, exclude: Collection[int]) -> int:
    waiting = (
        select(literal(1))
        .select_from(DataTransfer)
        .where(
            DataTransfer.destination_id == destination_id,
            text(QUEUED_SQL),
            col(DataTransfer.id).not_in(list(exclude)),
        )
        .limit(WAITING_COUNT)
        .subquery()
    )
    return session.exec(select(func.count()).select_from(waiting)).one()


def _next_ready(session: Session, destination_id: int, now: datetime) -> float | None:
    """The earliest scheduled or retry time still to come.

    A transfer is ready when both have passed, so the earlier of the two minimums is a
    time at or before which the next one becomes ready: waking then is never late.
    """
    times = []
    for column in (col(DataTransfer.scheduled), col(DataTransfer.retry_at)):
        first = session.exec(
            select(func.min(column)).where(
                DataTransfer.destination_id == destination_id, text(QUEUED_SQL), column > now
            )
        ).one()
        if first is not None:
            times.append(first.timestamp())
    return min(times, default=None)


def _dialect(session: Session) -> str:
    bind = session.get_bind()
    return bind.dialect.name
