"""The catalog schema: migrations apply on SQLite and PostgreSQL, entities round-trip."""

from __future__ import annotations

import subprocess
import sys
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


def test_transfer_ids_are_never_reused(engine: Engine) -> None:
    """Transfer ids name Temporal workflows: a deleted row's id is never handed out again."""
    with Session(engine) as session:
        dest = Destination(name="dest-b")
        f = DataFile(name="f.grib")
        session.add(dest)
        session.add(f)
        session.commit()

        def new_transfer() -> int:
            t = DataTransfer(
                data_file_id=f.id,
                destination_id=dest.id,
                target="f.grib",
                expires=utcnow() + timedelta(days=2),
            )
            session.add(t)
            session.commit()
            assert t.id is not None
            return t.id

        new_transfer()
        newest = new_transfer()
        session.delete(session.get(DataTransfer, newest))
        session.commit()
        assert new_transfer() > newest


def test_transfers_outlive_their_destination(engine: Engine) -> None:
    with Session(engine) as session:
        dest = Destination(name="dest-c")
        f = DataFile(name="f.grib")
        session.add(dest)
        session.add(f)
        session.commit()
        t = DataTransfer(
            data_file_id=f.id,
            destination_id=dest.id,
            target="f.grib",
            expires=utcnow() + timedelta(days=2),
            status=TransferStatus.DONE,
        )
        session.add(t)
        session.commit()
        transfer_id = t.id
        session.delete(dest)
        session.commit()
        session.expire_all()
        kept = session.get(DataTransfer, transfer_id)
        assert kept is not None and kept.destination_id is None


def test_processes_starting_together_migrate_one_at_a_time(catalog_url: str) -> None:
    """`ecpds up` starts the portal and the worker at once, and both migrate a new catalog;
    two first migrations at the same time failed with "table alembic_version already
    exists", and the portal exited."""
    code = (
        "import sys\n"
        "from sqlalchemy import text\n"
        "from ecpds.core.db import open_catalog\n"
        "with open_catalog(sys.argv[1]).connect() as c:\n"
        "    print(c.execute(text('SELECT version_num FROM alembic_version')).scalar_one())\n"
    )
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", code, catalog_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [start.communicate(timeout=120) for start in starts]
    assert [start.returncode for start in starts] == [0] * 4, [err for _, err in results]
    assert len({out for out, _ in results}) == 1
