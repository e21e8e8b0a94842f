"""Directory views of the store: the same objects listed by destination and by metadata key.

By destination, a file appears under each target name it has there; by metadata key, as
`VALUE/NAME` for every file that has the key. Only files whose bytes are in the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from ecpds.core.models import DataFile, DataTransfer, Destination


@dataclass
class ViewEntry:
    path: str
    data_file_id: str
    size: int
    arrived: datetime | None


def _stored(query: Any) -> Any:
    return query.where(col(DataFile.deleted).is_(False)).where(col(DataFile.arrived).is_not(None))


def by_destination(
    session: Session, *, destination: str, prefix: str = "", limit: int = 1000
) -> list[ViewEntry]:
    """The files queued for `destination`, by target name (sorted), under `prefix`."""
    query = _stored(
        select(DataTransfer.target, DataFile)
        .join(DataFile, col(DataFile.id) == col(DataTransfer.data_file_id))
        .join(Destination, col(Destination.id) == col(DataTransfer.destination_id))
        .where(Destination.name == destination)
        .where(col(DataTransfer.deleted).is_(False))
    )
    if prefix:
        query = query.where(col(DataTransfer.target).startswith(prefix.rstrip("/") + "/"))
    rows = session.exec(query.order_by(col(DataTransfer.target)).limit(limit)).all()
    return [ViewEntry(target, f.id, f.size, f.arrived) for target, f in rows]


def by_metadata(
    session: Session,
    *,
    key: str,
    value: str | None = None,
    destinations: list[str] | None = None,
    limit: int = 1000,
) -> list[ViewEntry]:
    """The files with metadata `key` (equal to `value` if given), as `VALUE/NAME`, sorted."""
    query = _stored(select(DataFile))
    if destinations is not None:
        query = query.where(
            col(DataFile.id).in_(
                select(DataTransfer.data_file_id)
                .join(Destination, col(Destination.id) == col(DataTransfer.destination_id))
                .where(col(Destination.name).in_(destinations))
            )
        )
    entries = []
    # JSON operators differ between SQLite and PostgreSQL: the key is matched here.
    for data_file in session.exec(query).all():
        found = data_file.meta.get(key)
        if found is None or (value is not None and found != value):
            continue
        entries.append(
            ViewEntry(f"{found}/{data_file.name}", data_file.id, data_file.size, data_file.arrived)
        )
    entries.sort(key=lambda e: e.path)
    return entries[:limit]
