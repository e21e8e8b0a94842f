"""The catalog snapshot on a real catalog: its counts are the catalog's, a data user's view
holds only its destinations, and a stale snapshot is served while the next one is taken."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session, select

from ecpds.core.models import (
    AcquisitionRun,
    DataFile,
    DataTransfer,
    Destination,
    DestinationStatus,
    ExpectedProduct,
    Notification,
    TransferStatus,
    utcnow,
)
from ecpds.core.snapshot import HOURS, CatalogSnapshot, CatalogSnapshots, take


def add_transfer(
    engine: Engine,
    destination: str,
    status: TransferStatus,
    *,
    hours_ago: int = 0,
    sent: int = 0,
    deleted: bool = False,
) -> None:
    when = utcnow() - timedelta(hours=hours_ago)
    with Session(engine) as session:
        found = session.exec(select(Destination).where(Destination.name == destination)).one()
        data_file = DataFile(name="p.grib", size=100, locations=["/store/a"], arrived=when)
        session.add(data_file)
        session.flush()
        done = status is TransferStatus.DONE
        session.add(
            DataTransfer(
                data_file_id=data_file.id,
                destination_id=found.id,
                target="p.grib",
                status=status,
                queued=when,
                finished=when if done else None,
                bytes_sent=sent,
                deleted=deleted,
                expires=when + timedelta(days=1),
            )
        )
        session.commit()


def small_catalog(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Destination(name="alpha"))
        session.add(Destination(name="beta", status=DestinationStatus.STOPPED))
        session.add(AcquisitionRun(host="h", destination="alpha", status="ok"))
        session.add(AcquisitionRun(host="h", destination="beta", status="failed"))
        session.add(
            Notification(message_id="m1", event="store", destination="beta", topic="t", payload=b"")
        )
        session.add(ExpectedProduct(name="z", destination="beta", pattern="zzz", due="00:00"))
        session.commit()
    add_transfer(engine, "alpha", TransferStatus.DONE, sent=40)
    add_transfer(engine, "alpha", TransferStatus.DONE, sent=2, hours_ago=3, deleted=True)
    add_transfer(engine, "alpha", TransferStatus.WAIT, hours_ago=HOURS + 2)  # before the chart
    add_transfer(engine, "beta", TransferStatus.FAIL, hours_ago=1)


def test_the_counts_are_the_catalogs(engine: Engine) -> None:
    small_catalog(engine)
    snapshot = take(engine)
    assert snapshot.transfers == {
        ("alpha", TransferStatus.DONE): 1,
        ("alpha", TransferStatus.WAIT): 1,
        ("beta", TransferStatus.FAIL): 1,
    }
    assert snapshot.bytes_sent == {"alpha": 42, "beta": 0}  # the deleted one counts
    assert snapshot.destinations_by_status() == {
        DestinationStatus.IDLE: 1,
        DestinationStatus.STOPPED: 1,
    }
    assert snapshot.backlog == {"beta": 1}
    assert snapshot.runs == {("alpha", "ok"): 1, ("beta", "failed"): 1}
    assert [run.destination for run in snapshot.recent_runs] == ["beta", "alpha"]
    assert snapshot.store == {"/store/a": (4, 400)}
    assert [(s.name, s.state) for s in snapshot.expected] == [("z", "missing")]
    hours = snapshot.per_hour()
    assert len(hours) == HOURS
    assert hours[-1][0] <= snapshot.taken < hours[-1][0] + timedelta(hours=1)
    assert sum(h.queued for _, h in hours) == 3  # not the one queued 26 hours ago
    assert sum(h.done for _, h in hours) == 2 and sum(h.bytes for _, h in hours) == 42
    beta = snapshot.per_hour("beta")
    assert sum(h.queued for _, h in beta) == 1 and sum(h.done for _, h in beta) == 0
    assert snapshot.busiest(5) == ["alpha", "beta"]


def test_a_data_users_view_has_only_its_destinations(engine: Engine) -> None:
    small_catalog(engine)
    mine = take(engine).view(["beta"])
    assert mine.by_status() == {TransferStatus.FAIL: 1}
    assert mine.bytes_sent == {"beta": 0}
    assert mine.destinations_by_status() == {DestinationStatus.STOPPED: 1}
    assert mine.runs == {("beta", "failed"): 1}
    assert [run.destination for run in mine.recent_runs] == ["beta"]
    assert mine.store == {}  # shared by every destination: for admins only
    assert sum(h.queued for _, h in mine.per_hour()) == 1
    assert mine.busiest(5) == ["beta"]
    assert [s.destination for s in mine.expected] == ["beta"]


def next_snapshot(snapshots: CatalogSnapshots, after: CatalogSnapshot) -> CatalogSnapshot:
    """The first snapshot read that is not `after` (the background refresh's)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = snapshots.current()
        if current is not after:
            return current
        time.sleep(0.05)
    raise AssertionError("no new snapshot within 30 s")


def test_a_stale_snapshot_is_served_while_the_next_is_taken(engine: Engine) -> None:
    small_catalog(engine)
    snapshots = CatalogSnapshots(engine, max_age=3600)
    first = snapshots.current()
    add_transfer(engine, "beta", TransferStatus.WAIT)
    assert snapshots.current() is first  # younger than its max age: the same counts
    snapshots.max_age = 0.05
    time.sleep(0.1)
    assert snapshots.current() is first  # stale: served at once, the next one is taken
    fresh = next_snapshot(snapshots, first)
    assert fresh.transfers["beta", TransferStatus.WAIT] == 1
    assert fresh.taken > first.taken


def test_a_max_age_of_zero_reads_the_catalog_every_time(engine: Engine) -> None:
    small_catalog(engine)
    snapshots = CatalogSnapshots(engine, max_age=0)
    assert ("beta", TransferStatus.WAIT) not in snapshots.current().transfers
    add_transfer(engine, "beta", TransferStatus.WAIT)
    assert snapshots.current().transfers["beta", TransferStatus.WAIT] == 1
