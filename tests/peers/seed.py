"""A big catalog in little time: destinations, data files and transfers written with Core
INSERTs in batches (PostgreSQL's COPY there), each row from its model's own defaults, for
benchmarks and page tests (bench/seed.py is its command line).

    seed(engine, destinations=1_000, transfers=1_000_000)

Each data file goes to `fan_out` destinations (a product sent to many sites); statuses,
priorities and times are spread over the last week so searches and counts have work.
"""

from __future__ import annotations

import itertools
import json
import random
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, insert
from sqlmodel import SQLModel

from ecpds.core.db import table_of
from ecpds.core.models import DataFile, DataTransfer, Destination, TransferStatus, utcnow

BATCH = 5_000
# Mostly delivered, some waiting and failing, a few running: as a busy day leaves it.
STATUSES = (
    [TransferStatus.DONE] * 80
    + [TransferStatus.WAIT] * 8
    + [TransferStatus.FAIL] * 4
    + [TransferStatus.RETR] * 3
    + [TransferStatus.EXEC] * 2
    + [TransferStatus.HOLD] * 3
)


def _template(model: type[SQLModel], **required: Any) -> dict[str, Any]:
    """Every column of `model` with its default (the model builds it once)."""
    row = model(**required).model_dump()
    row.pop("id", None)
    return {key: value for key, value in row.items() if key in model.__table__.columns}  # type: ignore[attr-defined]


def _write(connection: Connection, model: type[SQLModel], rows: Iterator[dict[str, Any]]) -> None:
    """The rows into `model`'s table: COPY on PostgreSQL (with its INSERTs, one per row,
    200,000 transfers took 18 s, not 10), Core INSERTs in batches elsewhere."""
    if connection.dialect.name != "postgresql":
        for batch in _batches(rows):
            connection.execute(insert(model), batch)
        return
    first = next(rows, None)
    if first is None:
        return
    quote = connection.dialect.identifier_preparer.quote
    columns = ", ".join(quote(column) for column in first)
    copying = f"COPY {quote(table_of(model).name)} ({columns}) FROM STDIN"
    raw = connection.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(copying) as copy:
        for row in itertools.chain([first], rows):
            # JSON columns (a file's meta and locations) as their text.
            copy.write_row(
                [json.dumps(v) if isinstance(v, dict | list) else v for v in row.values()]
            )


def _batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def seed(
    engine: Engine,
    *,
    destinations: int,
    transfers: int,
    fan_out: int = 100,
    prefix: str = "site",
) -> list[str]:
    """Add the rows; the destinations' names. Prints progress to nothing: returns quickly
    enough (about a minute for a million transfers on SQLite)."""
    rng = random.Random(42)
    now = utcnow()
    names = [f"{prefix}-{index:04d}" for index in range(destinations)]
    destination_row = _template(Destination, name=names[0])
    with engine.begin() as connection:
        connection.execute(
            insert(Destination), [destination_row | {"name": name} for name in names]
        )
        ids = [
            row[0]
            for row in connection.exec_driver_sql(
                "SELECT id FROM destination WHERE name LIKE ? ORDER BY id"
                if engine.dialect.name == "sqlite"
                else "SELECT id FROM destination WHERE name LIKE %s ORDER BY id",
                (f"{prefix}-%",),
            )
        ]
    files = max(1, transfers // max(1, min(fan_out, destinations)))
    file_row = _template(DataFile, name="x", id="x")
    file_ids = [uuid.uuid4().hex for _ in range(files)]

    def file_rows() -> Iterator[dict[str, Any]]:
        for index, file_id in enumerate(file_ids):
            created = now - timedelta(seconds=rng.randrange(7 * 86400))
            yield file_row | {
                "id": file_id,
                "name": f"product-{index:07d}.grib",
                "size": rng.randrange(1, 50_000_000),
                "md5": uuid.uuid4().hex,
                "created": created,
                "arrived": created,
                "expires": created + timedelta(days=7),
            }

    transfer_row = _template(
        DataTransfer, data_file_id="x", target="x", expires=now, destination_id=ids[0]
    )

    def transfer_rows() -> Iterator[dict[str, Any]]:
        for index in range(transfers):
            file_index = index % files
            status = rng.choice(STATUSES)
            queued = now - timedelta(seconds=rng.randrange(7 * 86400))
            done = status == TransferStatus.DONE
            yield transfer_row | {
                "data_file_id": file_ids[file_index],
                "destination_id": ids[(index // files + file_index) % len(ids)],
                "target": f"product-{file_index:07d}.grib",
                "status": status,
                "priority": rng.randrange(100),
                "queued": queued,
                "scheduled": queued,
                "started": queued + timedelta(seconds=1) if status != TransferStatus.WAIT else None,
                "finished": queued + timedelta(seconds=30) if done else None,
                "bytes_sent": rng.randrange(1, 50_000_000) if done else 0,
                "expires": queued + timedelta(days=7),
                "last_error": "connection refused" if status == TransferStatus.FAIL else None,
            }

    # One transaction: a commit per batch costs SQLite a WAL checkpoint now and then.
    with engine.begin() as connection:
        for model, rows in ((DataFile, file_rows()), (DataTransfer, transfer_rows())):
            _write(connection, model, rows)
    # The planner's statistics, as autovacuum would gather them soon after a bulk load
    # (without them PostgreSQL plans the first queries as if the tables were empty).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("VACUUM ANALYZE destination, datafile, datatransfer")
        else:
            connection.exec_driver_sql("ANALYZE")
    return names
