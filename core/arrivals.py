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


def _arrivals(
    session: Session, expected: Sequence[ExpectedProduct], since: datetime
) -> dict[str, list[tuple[str, datetime]]]:
    """What reached the expected products' destinations after `since`, per destination
    name in arrival order: one query however many products are expected."""
    names = {one.destination for one in expected}
    ids = dict(
        session.exec(
            select(Destination.id, Destination.name).where(col(Destination.name).in_(names))
        ).all()
    )
    rows = session.exec(
        select(DataTransfer.destination_id, DataTransfer.target, DataFile.arrived)
        .join(DataFile, col(DataFile.id) == DataTransfer.data_file_id)
        .where(col(DataTransfer.destination_id).in_(list(ids)), col(DataFile.arrived) > since)
        .order_by(col(DataFile.arrived))
    )
    found: dict[str, list[tuple[str, datetime]]] = {}
    for destination_id, target, arrived in rows:
        if arrived is not None:
            found.setdefault(ids[destination_id], []).append((target, arrived))
    return found


def _state(
    expected: ExpectedProduct, arrived: list[tuple[str, datetime]], now: datetime
) -> ExpectedProductStatus:
    due = due_at(expected, now)
    matcher = re.compile(expected.pattern)
    target, first = next(
        ((t, when) for t, when in arrived if when > due - WINDOW and matcher.search(t)),
        (None, None),
    )
    if now < due:
        state = "arrived" if first is not None else "waiting"
    elif first is None:
        state = "missing"
    else:
        state = "on time" if first <= due else "late"
    return ExpectedProductStatus.model_validate(
        expected.model_dump() | {"due_at": due, "state": state, "arrived": first, "target": target}
    )


def status(
    session: Session, expected: ExpectedProduct, now: datetime | None = None
) -> ExpectedProductStatus:
    return statuses(session, [expected], now)[0]


def statuses(
    session: Session, expected: Sequence[ExpectedProduct], now: datetime | None = None
) -> list[ExpectedProductStatus]:
    """Each product's state against today's due time, from two queries in all."""
    now = now or utcnow()
    if not expected:
        return []
    since = min(due_at(one, now) for one in expected) - WINDOW
    arrived = _arrivals(session, expected, since)
    return [_state(one, arrived.get(one.destination, []), now) for one in expected]
