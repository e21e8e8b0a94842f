"""Expected products against what reached their destination: waiting, arrived, on time,
late and missing, on a real catalog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from ecpds.core import arrivals
from ecpds.core.models import DataFile, DataTransfer, Destination, ExpectedProduct

DUE = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)


def arrive(session: Session, destination: Destination, target: str, at: datetime) -> None:
    data_file = DataFile(name=target, arrived=at)
    session.add(data_file)
    session.flush()
    session.add(
        DataTransfer(
            data_file_id=data_file.id,
            destination_id=destination.id,
            target=target,
            expires=at + timedelta(days=1),
        )
    )
    session.flush()


@pytest.mark.parametrize(
    ("arrivals_at", "now", "state"),
    [
        ([], DUE - timedelta(hours=1), "waiting"),
        ([DUE - timedelta(minutes=20)], DUE - timedelta(minutes=10), "arrived"),
        ([DUE - timedelta(minutes=20)], DUE + timedelta(hours=1), "on time"),
        ([DUE + timedelta(minutes=5)], DUE + timedelta(hours=1), "late"),
        ([], DUE + timedelta(hours=1), "missing"),
        ([DUE - timedelta(hours=25)], DUE + timedelta(hours=1), "missing"),  # yesterday's
    ],
)
def test_states(engine: Engine, arrivals_at: list[datetime], now: datetime, state: str) -> None:
    with Session(engine) as session:
        destination = Destination(name="dwd")
        session.add(destination)
        session.flush()
        arrive(session, destination, "an/other-product.grib", DUE - timedelta(minutes=30))
        for at in arrivals_at:
            arrive(session, destination, "fc/2026120700/t2m.grib", at)
        expected = ExpectedProduct(
            name="t2m-00", destination="dwd", pattern=r"fc/\d{10}/t2m", due="06:00"
        )
        session.add(expected)
        session.flush()
        found = arrivals.status(session, expected, now)
    assert found.state == state
    assert found.due_at == DUE
    if arrivals_at and state != "missing":
        assert found.target == "fc/2026120700/t2m.grib"
        assert found.arrived == arrivals_at[0]
    else:
        assert found.arrived is None
