"""The catalog's aggregate counts, read at most every few seconds and off the request path:
one snapshot serves the console's dashboard (every user's, filtered to its destinations),
its arrivals chart and the portal's /metrics."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Engine, text
from sqlmodel import Session, col, select

from ecpds.core import arrivals, catalog
from ecpds.core.models import (
    AcquisitionRun,
    DestinationStatus,
    ExpectedProductStatus,
    TransferStatus,
    utcnow,
)

HOURS = 24  # the hourly counts cover this many hours, the current one included
RECENT_RUNS = 50  # acquisition runs kept, newest first (a filtered view shows its own)
# Store usage moves slowly, and no index can cover it (`locations` is JSON, which has no
# btree order in PostgreSQL): a million files take most of a second to scan, so it is
# read at most every STORE_EVERY seconds whatever the snapshot's age.
STORE_EVERY = 60.0

# One walk of the covering index ix_datatransfer_counts, in its order (no row lookups, no
# sort) gives counts per destination and status and the bytes delivered. Bytes are summed
# from the catalog rather than counted by the workers: transfers are only ever marked
# deleted, so the sum only grows, counts each delivery once whichever worker made it and
# survives worker restarts.
TRANSFERS_SQL = text(
    "SELECT destination_id, destination_name, status, deleted, count(*),"
    " coalesce(sum(CASE WHEN status = 'DONE' THEN bytes_sent ELSE 0 END), 0)"
    " FROM datatransfer GROUP BY destination_id, status, deleted, destination_name"
)
DESTINATIONS_SQL = text("SELECT id, name, status FROM destination")
ACQUISITION_RUNS_SQL = text(
    "SELECT destination, status, count(*) FROM acquisitionrun GROUP BY destination, status"
)
ACQUIRED_FILES_SQL = text(
    "SELECT destination_id, count(*), coalesce(sum(size), 0) FROM acquiredfile"
    " GROUP BY destination_id"
)
NOTIFICATION_BACKLOG_SQL = text(
    "SELECT destination, count(*) FROM notification WHERE pending GROUP BY destination"
)
# Grouping by the JSON list's text keeps JSON parsing out of the scan (few distinct lists
# exist: one per combination of store locations).
STORE_SQL = text(
    "SELECT CAST(locations AS TEXT), count(*), coalesce(sum(size), 0) FROM datafile"
    " WHERE NOT deleted GROUP BY CAST(locations AS TEXT)"
)
# Per hour and destination: transfers queued (ix_datatransfer_queued) and transfers
# delivered with their bytes (ix_datatransfer_delivered), each a range of its index read
# alone. Grouped by hour first and bounded on both sides: so SQLite's planner picks them.
HOUR_SQL = {
    "sqlite": "substr({column}, 1, 13)",  # stored as 'YYYY-MM-DD HH:MM:SS…' in UTC
    "postgresql": "date_trunc('hour', {column} AT TIME ZONE 'UTC')",
}
QUEUED_SQL = (
    "SELECT destination_id, {hour}, count(*) FROM datatransfer"
    " WHERE queued >= :since AND queued < :until GROUP BY {hour}, destination_id"
)
DELIVERED_SQL = (
    "SELECT destination_id, {hour}, count(*), coalesce(sum(bytes_sent), 0) FROM datatransfer"
    " WHERE finished >= :since AND finished < :until AND status = 'DONE'"
    " GROUP BY {hour}, destination_id"
)


class Hour(NamedTuple):
    """One hour of traffic: transfers queued, transfers delivered, bytes delivered."""

    queued: int = 0
    done: int = 0
    bytes: int = 0

    def plus(self, other: Hour) -> Hour:
        return Hour(self.queued + other.queued, self.done + other.done, self.bytes + other.bytes)


@dataclass(frozen=True)
class CatalogSnapshot:
    """The catalog's counts as of `taken` (UTC), keyed by destination name."""

    taken: datetime
    seconds: float  # what its queries took
    transfers: dict[tuple[str, TransferStatus], int]  # not deleted
    bytes_sent: dict[str, int]  # by DONE transfers, deleted ones included
    destinations: dict[str, DestinationStatus]
    backlog: dict[str, int]  # notifications not yet published
    runs: dict[tuple[str, str], int]  # acquisition runs per destination and outcome
    recent_runs: list[AcquisitionRun]  # newest first
    acquired: dict[str, tuple[int, int]]  # files and bytes acquired
    store: dict[str, tuple[int, int]]  # files and bytes per store location
    store_taken: float  # time.monotonic() of the store's reading
    hours: list[datetime]  # the starts of the HOURS hours, oldest first
    # Per destination and hour: (queued, delivered, bytes), plain tuples of numbers, which
    # the garbage collector stops tracking (some 25,000 of them, each of which would
    # otherwise lengthen every full collection).
    hourly: dict[tuple[str, datetime], tuple[int, int, int]]
    expected: list[ExpectedProductStatus]

    def view(self, destinations: Sequence[str] | None) -> CatalogSnapshot:
        """What a user reaching `destinations` (None: all) sees: its own counts only, and
        no store usage (the store is shared by every destination)."""
        if destinations is None:
            return self
        mine = set(destinations)
        return replace(
            self,
            transfers={k: n for k, n in self.transfers.items() if k[0] in mine},
            bytes_sent={k: n for k, n in self.bytes_sent.items() if k in mine},
            destinations={k: s for k, s in self.destinations.items() if k in mine},
            backlog={k: n for k, n in self.backlog.items() if k in mine},
            runs={k: n for k, n in self.runs.items() if k[0] in mine},
            recent_runs=[run for run in self.recent_runs if run.destination in mine],
            acquired={k: v for k, v in self.acquired.items() if k in mine},
            store={},
            hourly={k: h for k, h in self.hourly.items() if k[0] in mine},
            expected=[s for s in self.expected if s.destination in mine],
        )

    def by_status(self) -> dict[TransferStatus, int]:
        counts: dict[TransferStatus, int] = {}
        for (_, status), count in self.transfers.items():
            counts[status] = counts.get(status, 0) + count
        return counts

    def destinations_by_status(self) -> dict[DestinationStatus, int]:
        counts: dict[DestinationStatus, int] = {}
        for status in self.destinations.values():
            counts[status] = counts.get(status, 0) + 1
        return counts

    def per_hour(self, destination: str | None = None) -> list[tuple[datetime, Hour]]:
        """Every hour of the window, oldest first: of `destination`, or summed over all."""
        totals = {hour: Hour() for hour in self.hours}
        for (name, hour), counts in self.hourly.items():
            if (destination is None or name == destination) and hour in totals:
                totals[hour] = totals[hour].plus(Hour(*counts))
        return list(totals.items())

    def busiest(self, count: int) -> list[str]:
        """The destinations with the most transfers queued in the window, most first."""
        queued: dict[str, int] = {}
        for (name, _), counts in self.hourly.items():
            queued[name] = queued.get(name, 0) + counts[0]
        return sorted(queued, key=lambda name: (-queued[name], name))[:count]


def take(engine: Engine, previous: CatalogSnapshot | None = None) -> CatalogSnapshot:
    """A new snapshot from the catalog (store usage from `previous` if recent enough)."""
    started, now = time.monotonic(), utcnow()
    first_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    hours = [first_hour + timedelta(hours=k) for k in range(HOURS)]
    with engine.connect() as connection:
        names, states = {}, {}
        for id_, name, status in connection.execute(DESTINATIONS_SQL):
            names[id_], states[name] = name, DestinationStatus[status]  # stored by name
        transfers: dict[tuple[str, TransferStatus], int] = {}
        sent: dict[str, int] = {}
        for id_, kept_name, status, deleted, count, bytes_sent in connection.execute(TRANSFERS_SQL):
            name = names.get(id_, kept_name or "")
            sent[name] = sent.get(name, 0) + int(bytes_sent)
            if not deleted:
                key = (name, TransferStatus(status))
                transfers[key] = transfers.get(key, 0) + count
        runs = {(d, s): n for d, s, n in connection.execute(ACQUISITION_RUNS_SQL)}
        acquired = {
            names[id_]: (n, int(size))
            for id_, n, size in connection.execute(ACQUIRED_FILES_SQL)
            if id_ in names
        }
        backlog = {name: count for name, count in connection.execute(NOTIFICATION_BACKLOG_SQL)}
        if previous is not None and started - previous.store_taken < STORE_EVERY:
            store, store_taken = previous.store, previous.store_taken
        else:
            store, store_taken = _store_usage(connection.execute(STORE_SQL)), started
        hourly = _hourly(connection, names, first_hour)
    with Session(engine) as session:
        recent = session.exec(
            select(AcquisitionRun).order_by(col(AcquisitionRun.id).desc()).limit(RECENT_RUNS)
        ).all()
        expected = arrivals.statuses(session, catalog.list_expected(session), now)
    return CatalogSnapshot(
        taken=now,
        seconds=time.monotonic() - started,
        transfers=transfers,
        bytes_sent=sent,
        destinations=states,
        backlog=backlog,
        runs=runs,
        recent_runs=list(recent),
        acquired=acquired,
        store=store,
        store_taken=store_taken,
        hours=hours,
        hourly=hourly,
        expected=expected,
    )


def _store_usage(rows: Iterable[Any]) -> dict[str, tuple[int, int]]:
    usage: dict[str, tuple[int, int]] = {}
    for locations, count, size in rows:
        for location in json.loads(locations or "[]"):
            files, held = usage.get(location, (0, 0))
            usage[location] = (files + count, held + int(size))
    return dict(sorted(usage.items()))


def _hourly(
    connection: Any, names: dict[int, str], since: datetime
) -> dict[tuple[str, datetime], tuple[int, int, int]]:
    hour_of = HOUR_SQL[connection.dialect.name]
    queued = text(QUEUED_SQL.format(hour=hour_of.format(column="queued")))
    delivered = text(DELIVERED_SQL.format(hour=hour_of.format(column="finished")))
    until = since + timedelta(hours=HOURS)
    # Bound as the column stores it: SQLite compares the text.
    bounds: dict[str, Any] = {"since": since, "until": until}
    if connection.dialect.name == "sqlite":
        bounds = {key: f"{value:%Y-%m-%d %H:%M:%S}" for key, value in bounds.items()}
    # Plain lists while summing: some 50,000 rows for a million transfers.
    sums: dict[tuple[str, datetime], list[int]] = {}
    hours: dict[Any, datetime] = {}
    for id_, hour, count in connection.execute(queued, bounds):
        if id_ in names:
            at = hours.get(hour) or hours.setdefault(hour, _hour(hour))
            sums.setdefault((names[id_], at), [0, 0, 0])[0] += count
    for id_, hour, count, size in connection.execute(delivered, bounds):
        if id_ in names:
            at = hours.get(hour) or hours.setdefault(hour, _hour(hour))
            counts = sums.setdefault((names[id_], at), [0, 0, 0])
            counts[1] += count
            counts[2] += int(size)
    return {key: (queued, done, size) for key, (queued, done, size) in sums.items()}


def _hour(value: str | datetime) -> datetime:
    if isinstance(value, str):
        return datetime.strptime(value, "%Y-%m-%d %H").replace(tzinfo=UTC)
    return value.replace(tzinfo=UTC)


class CatalogSnapshots:
    """The latest snapshot, renewed when read after `max_age` seconds: the reader gets the
    last one at once and a background thread takes the next (only the very first read
    waits). A max_age of 0 takes a new one at every read: exact counts, for tests."""

    def __init__(self, engine: Engine, max_age: float) -> None:
        self.engine = engine
        self.max_age = max_age
        self._latest: CatalogSnapshot | None = None
        self._at = 0.0
        self._lock = threading.Lock()
        self._first = threading.Lock()
        self._refreshing = False

    def current(self) -> CatalogSnapshot:
        if self.max_age <= 0:
            return self._renew()
        with self._lock:
            latest, stale = self._latest, time.monotonic() - self._at >= self.max_age
            refresh = latest is not None and stale and not self._refreshing
            self._refreshing |= refresh
        if latest is None:
            with self._first:  # readers arriving together wait for the same first one
                return self._latest or self._renew()
        if refresh:
            threading.Thread(target=self._refresh, name="catalog-snapshot", daemon=True).start()
        return latest

    def _renew(self) -> CatalogSnapshot:
        snapshot = take(self.engine, self._latest)
        with self._lock:
            self._latest, self._at = snapshot, time.monotonic()
        return snapshot

    def _refresh(self) -> None:
        try:
            self._renew()
        finally:
            with self._lock:
                self._refreshing = False
