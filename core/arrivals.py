"""Expected products: where each one an operator declared stands against its due time.

A product due at HH:MM is looked for among what reached its destination in the 24 hours
before that time, and after it: before the due time it is waiting or arrived; after it,
on time, late (it came after the due time) or missing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, time, timedelta

from sqlmodel import Session, col, select

from ecpds.core.models import (
    DataFile,
    DataTransfer,
    Destination,
    ExpectedProduct,
    ExpectedProductStatus,
    utcnow,
)

WINDOW = timedelta(hours=24)  # how long before its due time a product counts for it


def due_at(expected: ExpectedProduct, now: datetime) -> datetime:
    """Today's due time (UTC): the state is about it all day."""
    hour, minute = (int(part) for part in expected.due.split(":"))
    return datetime.combine(now.date(), time(hour, minute), tzinfo=now.tzinfo)


def _first_arrival(
    session: Session, destination_id: int, pattern: str, since: datetime
) -> tuple[str, datetime] | None:
    rows = session.exec(
        select(DataTransfer.target, DataFile.arrived)
        .join(DataFile, col(DataFile.id) == DataTransfer.data_file_id)
        .where(DataTransfer.destination_id == destination_id, col(DataFile.arrived) > since)
        .order_by(col(DataFile.arrived))
    )
    matcher = re.compile(pattern)
    for target, arrived in rows:
        if arrived is not None and matcher.search(target):
            return target, arrived
    return None


def status(
    session: Session, expected: ExpectedProduct, now: datetime | None = None
) -> ExpectedProductStatus:
    now = now or utcnow()
    due = due_at(expected, now)
    destination = session.exec(
        select(Destination).where(Destination.name == expected.destination)
    ).first()
    found = None
    if destination is not None and destination.id is not None:
        found = _first_arrival(session, destination.id, expected.pattern, due - WINDOW)
    target, arrived = found if found is not None else (None, None)
    if now < due:
        state = "arrived" if arrived is not None else "waiting"
    elif arrived is None:
        state = "missing"
    else:
        state = "on time" if arrived <= due else "late"
    return ExpectedProductStatus.model_validate(
        expected.model_dump()
        | {"due_at": due, "state": state, "arrived": arrived, "target": target}
    )


def statuses(
    session: Session, expected: Sequence[ExpectedProduct], now: datetime | None = None
) -> list[ExpectedProductStatus]:
    now = now or utcnow()
    return [status(session, one, now) for one in expected]
