"""Read-only views of the catalog: the store as folders, and how far a group of files is.

By destination, a file appears under each target name it has there; by metadata key, as
`VALUE/NAME` for every file that has the key (only files whose bytes are in the store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from ecpds.core.models import DataFile, DataTransfer, Destination, TransferStatus


@dataclass
class ViewEntry:
    path: str
    data_file_id: str
    size: int
    arrived: datetime | None


def _stored(query: Any) -> Any:
    return query.where(col(DataFile.deleted).is_(False)).where(col(DataFile.arrived).is_not(None))


def _pushed_to(query: Any, destinations: list[str] | None) -> Any:
    """Only the files with a transfer to one of `destinations` (None: all files)."""
    if destinations is None:
        return query
    return query.where(
        col(DataFile.id).in_(
            select(DataTransfer.data_file_id)
            .join(Destination, col(Destination.id) == col(DataTransfer.destination_id))
            .where(col(Destination.name).in_(destinations))
        )
    )


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
    query = _pushed_to(_stored(select(DataFile)), destinations)
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


@dataclass
class GroupProgress:
    group: str
    total: int = 0
    arrived: int = 0
    pending: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)  # id, name, source, error

    @property
    def finished(self) -> bool:
        return self.pending == 0


def group_progress(
    session: Session, *, group: str, destinations: list[str] | None = None
) -> GroupProgress:
    """How far the group's files are: in the store, failed (with why), still to come.

    Counted in SQL: `ecpds wait` asks every second while the workers fetch.
    """
    members = _pushed_to(
        select(DataFile.id).where(DataFile.group == group).where(col(DataFile.deleted).is_(False)),
        destinations,
    )
    ids = members.subquery()
    total, arrived = session.exec(
        select(func.count(), func.count(col(DataFile.arrived))).where(
            col(DataFile.id).in_(select(ids.c.id))
        )
    ).one()
    progress = GroupProgress(group=group, total=total, arrived=arrived)
    failed = session.exec(
        select(DataFile.id, DataFile.name, DataFile.source, DataTransfer.last_error)
        .join(DataTransfer, col(DataTransfer.data_file_id) == col(DataFile.id))
        .where(col(DataFile.id).in_(select(ids.c.id)))
        .where(col(DataFile.arrived).is_(None))
        .where(DataTransfer.status == TransferStatus.FAIL)
        .order_by(col(DataFile.name))
    ).all()
    seen: set[str] = set()
    for data_file_id, name, source, error in failed:
        if data_file_id not in seen:
            seen.add(data_file_id)
            progress.failed.append(
                {"id": data_file_id, "name": name, "source": source or "", "error": error or ""}
            )
    progress.pending = total - arrived - len(progress.failed)
    return progress
