"""Prometheus metrics: what the catalog says (its snapshot, a few seconds old at most),
what a worker measures as it delivers, and what the portal's doors serve."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ecpds.core.models import QUEUED_STATUSES, ExpectedProductStatus, utcnow
from ecpds.core.snapshot import CatalogSnapshot, CatalogSnapshots

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


def portal_registry(snapshots: CatalogSnapshots) -> CollectorRegistry:
    """What the portal's /metrics shows: the catalog's numbers and its doors' traffic."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CatalogCollector(snapshots))
    registry.register(PORTAL_REQUESTS)
    registry.register(PORTAL_BYTES)
    return registry


def observe_delivery(protocol: str, seconds: float, bytes_sent: int) -> None:
    """A worker delivered a transfer: its duration and rate go in the histograms."""
    TRANSFER_DURATION.labels(protocol).observe(seconds)
    if seconds > 0:
        TRANSFER_RATE.labels(protocol).observe(bytes_sent / seconds)


# --- read from the catalog's snapshot -----------------------------------------------------


class CatalogCollector(Collector):
    """Counts from the catalog's snapshot (core/snapshot.py): at most `snapshot_seconds`
    old, shared with the console, so a scrape costs no catalog query of its own."""

    def __init__(self, snapshots: CatalogSnapshots) -> None:
        self.snapshots = snapshots
        self.shown: tuple[CatalogSnapshot, list[Metric]] | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # read only at scrape time: no catalog query when it is registered

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshots.current()
        # The families of a snapshot are built once: some 10,000 samples with a thousand
        # destinations, which, built at every scrape, made the garbage collector walk the
        # whole heap every few scrapes (+130 ms each time).
        if self.shown is None or self.shown[0] is not snapshot:
            self.shown = (snapshot, list(_catalog_metrics(snapshot)))
        yield from self.shown[1]
        age = GaugeMetricFamily(
            "ecpds_catalog_snapshot_age_seconds", "How old the catalog counts shown are"
        )
        age.add_metric([], (utcnow() - snapshot.taken).total_seconds())
        yield age


def _catalog_metrics(snapshot: CatalogSnapshot) -> Iterator[Metric]:
    yield from _transfer_metrics(snapshot)
    yield from _acquisition_metrics(snapshot)
    notifications = GaugeMetricFamily(
        "ecpds_notification_backlog", "Notifications in the outbox not yet published"
    )
    notifications.add_metric([], sum(snapshot.backlog.values()))
    yield notifications
    yield from _store_metrics(snapshot)
    yield _expected_metric(snapshot.expected)
    scrape = GaugeMetricFamily(
        "ecpds_catalog_scrape_seconds",
        "Time the catalog queries of the counts shown took (their snapshot's)",
    )
    scrape.add_metric([], snapshot.seconds)
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


def _transfer_metrics(snapshot: CatalogSnapshot) -> Iterator[Metric]:
    waiting: dict[str, int] = {}
    for (destination, status), count in snapshot.transfers.items():
        waiting[destination] = waiting.get(destination, 0) + (
            count if status in QUEUED_STATUSES else 0
        )
    transfers = GaugeMetricFamily(
        "ecpds_transfers",
        "Transfers in the catalog (not deleted) per destination and status",
        labels=["destination", "status"],
    )
    for (destination, status), count in sorted(snapshot.transfers.items()):
        transfers.add_metric([destination, status.value], count)
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
    for destination, count in sorted(snapshot.bytes_sent.items()):
        delivered.add_metric([destination], count)
    yield delivered


def _acquisition_metrics(snapshot: CatalogSnapshot) -> Iterator[Metric]:
    family = GaugeMetricFamily(
        "ecpds_acquisition_runs",
        "Discovery runs per destination and outcome (running, ok, partial, failed)",
        labels=["destination", "status"],
    )
    for (destination, status), count in sorted(snapshot.runs.items()):
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
    for destination, (count, bytes_) in sorted(snapshot.acquired.items()):
        files.add_metric([destination], count)
        size.add_metric([destination], bytes_)
    yield files
    yield size


def _store_metrics(snapshot: CatalogSnapshot) -> Iterator[Metric]:
    stored_files = GaugeMetricFamily(
        "ecpds_store_files", "Data files (not deleted) held per store location", labels=["location"]
    )
    stored_bytes = GaugeMetricFamily(
        "ecpds_store_bytes", "Bytes of the data files held per store location", labels=["location"]
    )
    for location, (count, bytes_) in snapshot.store.items():
        stored_files.add_metric([location], count)
        stored_bytes.add_metric([location], bytes_)
    yield stored_files
    yield stored_bytes
