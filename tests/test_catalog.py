"""The catalog schema: migrations apply on SQLite and PostgreSQL, entities round-trip."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session, select

from ecpds.core.db import migrate
from ecpds.core.models import DataFile, DataTransfer, Destination, TransferStatus, utcnow


def test_migrations_are_idempotent(engine: Engine) -> None:
    migrate(engine)
    with Session(engine) as session:
        assert session.exec(select(Destination)).all() == []


def test_transfer_round_trip_keeps_utc_and_big_sizes(engine: Engine) -> None:
    with Session(engine) as session:
        dest = Destination(name="dest-a")
        f = DataFile(name="big.grib", size=5 * 2**30, meta={"k": "v"})
        session.add(dest)
        session.add(f)
        session.commit()
        t = DataTransfer(
            data_file_id=f.id,
            destination_id=dest.id,
            target="big.grib",
            expires=utcnow() + timedelta(days=2),
            status=TransferStatus.WAIT,
            bytes_sent=5 * 2**30,
        )
        session.add(t)
        session.commit()
        session.expire_all()
        back = session.get(DataTransfer, t.id)
        assert back is not None
        assert back.expires.tzinfo is not None
        assert back.bytes_sent == 5 * 2**30
        assert session.get(DataFile, f.id).meta == {"k": "v"}
