"""Prometheus metrics: what the catalog says (read at scrape time), what a worker measures
as it delivers, and what the portal's doors serve."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text
from sqlmodel import Session

from ecpds.core import arrivals, catalog
from ecpds.core.models import QUEUED_STATUSES, ExpectedProductStatus, TransferStatus

# A `_created` timestamp beside every counter and histogram doubles the series for
# nothing Prometheus's rate() needs.
disable_created_metrics()

# --- measured by the process that does the work ------------------------------------------
# Not in prometheus_client's global registry: each endpoint's registry names what it shows
# (tests run several portals and workers in one process).

# No destination label on the histograms: a thousand destinations times a dozen buckets
# would be more series than the rest of ecpds together; per-destination counts come
# from the catalog instead.
TRANSFER_DURATION = Histogram(
    "ecpds_transfer_duration_seconds",
    "Time a worker took to send a transfer's file, from its start to DONE",
    ["protocol"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
    registry=None,
)
TRANSFER_RATE = Histogram(
    "ecpds_transfer_rate_bytes_per_second",
    "Rate of each delivered transfer (bytes of the attempt that finished it over its time)",
    ["protocol"],
    buckets=tuple(float(10**k) for k in range(3, 11)),
    registry=None,
)
PORTAL_REQUESTS = Counter(
    "ecpds_portal_requests",
    "Requests the portal answered per door: HTTP requests (https, s3), files opened (ftp, sftp)",
    ["door"],
    registry=None,
)
PORTAL_BYTES = Counter(
    "ecpds_portal_bytes",
    "Body bytes the portal received from and sent to clients, per door",
    ["door", "direction"],
    registry=None,
)


@dataclass(frozen=True)
class DoorTraffic:
    """The counters of one door of the portal."""

    requests: Counter
    received: Counter
    sent: Counter


def door_traffic(door: str) -> DoorTraffic:
    return DoorTraffic(
        PORTAL_REQUESTS.labels(door),
        PORTAL_BYTES.labels(door, "received"),
        PORTAL_BYTES.labels(door, "sent"),
    )


def worker_registry() -> CollectorRegistry:
    """What a worker's /metrics shows: its own measurements of the transfers it sent."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(TRANSFER_DURATION)
    registry.register(TRANSFER_RATE)
    return registry


def portal_registry(engine: Engine) -> CollectorRegistry:
    """What the portal's /metrics shows: the catalog's numbers and its doors' traffic."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CatalogCollector(engine))
    registry.register(PORTAL_REQUESTS)
    registry.register(PORTAL_BYTES)
    return registry


def observe_delivery(protocol: str, seconds: float, bytes_sent: int) -> None:
    """A worker delivered a transfer: its duration and rate go in the histograms."""
    TRANSFER_DURATION.labels(protocol).observe(seconds)
    if seconds > 0:
        TRANSFER_RATE.labels(protocol).observe(bytes_sent / seconds)


# --- read from the catalog at scrape time -------------------------------------------------

# One scan of the transfers gives the counts per status, the waiting counts and the bytes
# delivered. Bytes sent are summed from the catalog rather than counted by the workers:
# transfers are only ever marked deleted, never removed, so the sum only grows, counts
# each delivery once whichever worker made it, and survives worker restarts (a
# worker's own counter would start again at 0 and miss what other workers sent).
TRANSFERS_SQL = text(
    "SELECT destination_id, destination_name, status, deleted, count(*),"
    " coalesce(sum(CASE WHEN status = 'DONE' THEN bytes_sent ELSE 0 END), 0)"
    " FROM datatransfer GROUP BY destination_id, status, deleted, destination_name"
)
# Grouped in the order of ix_datatransfer_counts, which holds every column read: a scan of
# that index alone (no row lookups, no sort). Names come from the destinations, not a
# join per transfer.
DESTINATIONS_SQL = text("SELECT id, name FROM destination")
ACQUISITION_RUNS_SQL = text(
    "SELECT destination, status, count(*) FROM acquisitionrun GROUP BY destination, status"
)
ACQUIRED_FILES_SQL = text(
    "SELECT d.name, a.count, a.bytes FROM (SELECT destination_id, count(*) AS count,"
    " coalesce(sum(size), 0) AS bytes FROM acquiredfile GROUP BY destination_id) a"
    " JOIN destination d ON d.id = a.destination_id"
)
# The partial-free index ix_notification_pending starts with `pending`.
NOTIFICATION_BACKLOG_SQL = text("SELECT count(*) FROM notification WHERE pending")
# `locations` is a JSON list; grouping by its text keeps JSON parsing out of the scan
# (few distinct lists exist: one per combination of store locations). No index can cover
# it (PostgreSQL's json has no btree order), so it is read at most every STORE_EVERY
# seconds: store usage moves slowly, and a million files take most of a second to scan.
STORE_SQL = text(
    "SELECT CAST(locations AS TEXT), count(*), coalesce(sum(size), 0) FROM datafile"
    " WHERE NOT deleted GROUP BY CAST(locations AS TEXT)"
)
STORE_EVERY = 60.0


class CatalogCollector(Collector):
    """Counts from the catalog, read at each scrape so they match it (store usage: at most
    every STORE_EVERY seconds)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.stored: list[Any] = []
        self.stored_at: float | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # read only at scrape time: no catalog query when it is registered

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        with self.engine.connect() as connection:
            names = {id_: name for id_, name in connection.execute(DESTINATIONS_SQL)}
            transfers = [
                (names.get(row[0], row[1] or ""), *row[2:])
                for row in connection.execute(TRANSFERS_SQL)
            ]
            runs = connection.execute(ACQUISITION_RUNS_SQL).all()
            acquired = connection.execute(ACQUIRED_FILES_SQL).all()
            backlog = connection.execute(NOTIFICATION_BACKLOG_SQL).scalar_one()
            if self.stored_at is None or started - self.stored_at >= STORE_EVERY:
                self.stored, self.stored_at = list(connection.execute(STORE_SQL)), started
        with Session(self.engine) as session:
            expected = arrivals.statuses(session, catalog.list_expected(session))
        yield from _transfer_metrics(transfers)
        yield from _acquisition_metrics(runs, acquired)
        notifications = GaugeMetricFamily(
            "ecpds_notification_backlog", "Notifications in the outbox not yet published"
        )
        notifications.add_metric([], backlog)
        yield notifications
        yield from _store_metrics(self.stored)
        yield _expected_metric(expected)
        scrape = GaugeMetricFamily(
            "ecpds_catalog_scrape_seconds", "Time the catalog queries of this scrape took"
        )
        scrape.add_metric([], time.monotonic() - started)
        yield scrape


def _expected_metric(statuses: Iterable[ExpectedProductStatus]) -> Metric:
    """1 for each expected product's current state (late and missing are the alarms)."""
    family = GaugeMetricFamily(
        "ecpds_expected_product",
        "Expected products by destination and state against today's due time "
        "(waiting, arrived, on time, late, missing): 1 for its current state",
        labels=["name", "destination", "state"],
    )
    for status in statuses:
        family.add_metric([status.name, status.destination, status.state], 1)
    return family


def _transfer_metrics(rows: Iterable[Any]) -> Iterator[Metric]:
    by_status: dict[tuple[str, str], int] = {}
    waiting: dict[str, int] = {}
    sent: dict[str, int] = {}
    for destination, status, deleted, count, bytes_sent in rows:
        # Deleted transfers still count what they delivered, not what they are now.
        sent[destination] = sent.get(destination, 0) + int(bytes_sent)
        if deleted:
            continue
        by_status[destination, status] = by_status.get((destination, status), 0) + count
        waiting.setdefault(destination, 0)
        if status in QUEUED_STATUSES:
            waiting[destination] += count
    transfers = GaugeMetricFamily(
        "ecpds_transfers",
        "Transfers in the catalog (not deleted) per destination and status",
        labels=["destination", "status"],
    )
    for (destination, status), count in sorted(by_status.items()):
        transfers.add_metric([destination, TransferStatus(status).value], count)
    yield transfers
    queued = GaugeMetricFamily(
        "ecpds_transfers_waiting",
        "Transfers waiting in a destination's queue (WAIT, SCHE, RETR)",
        labels=["destination"],
    )
    for destination, count in sorted(waiting.items()):
        queued.add_metric([destination], count)
    yield queued
    delivered = CounterMetricFamily(
        "ecpds_bytes_sent",
        "Bytes delivered by DONE transfers per destination (deleted ones included)",
        labels=["destination"],
    )
    for destination, count in sorted(sent.items()):
        delivered.add_metric([destination], count)
    yield delivered


def _acquisition_metrics(runs: Iterable[Any], acquired: Iterable[Any]) -> Iterator[Metric]:
    family = GaugeMetricFamily(
        "ecpds_acquisition_runs",
        "Discovery runs per destination and outcome (running, ok, partial, failed)",
        labels=["destination", "status"],
    )
    for destination, status, count in runs:
        family.add_metric([destination, status], count)
    yield family
    files = GaugeMetricFamily(
        "ecpds_acquired_files", "Files acquired per destination", labels=["destination"]
    )
    size = GaugeMetricFamily(
        "ecpds_acquired_bytes",
        "Bytes of the files acquired per destination",
        labels=["destination"],
    )
    for destination, count, bytes_ in acquired:
        files.add_metric([destination], count)
        size.add_metric([destination], int(bytes_))
    yield files
    yield size


def _store_metrics(rows: Iterable[Any]) -> Iterator[Metric]:
    files: dict[str, int] = {}
    size: dict[str, int] = {}
    for locations, count, bytes_ in rows:
        for location in json.loads(locations or "[]"):
            files[location] = files.get(location, 0) + count
            size[location] = size.get(location, 0) + int(bytes_)
    stored_files = GaugeMetricFamily(
        "ecpds_store_files", "Data files (not deleted) held per store location", labels=["location"]
    )
    stored_bytes = GaugeMetricFamily(
        "ecpds_store_bytes", "Bytes of the data files held per store location", labels=["location"]
    )
    for location in sorted(files):
        stored_files.add_metric([location], files[location])
        stored_bytes.add_metric([location], size[location])
    yield stored_files
    yield stored_bytes
