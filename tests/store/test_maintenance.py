"""Replica repair, garbage collection and their schedules, run as workflows on the worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

from sqlmodel import Session, select

from ecpds.core.db import session_scope
from ecpds.core.engine import (
    GARBAGE_COLLECTION_WORKFLOW,
    REPLICATION_WORKFLOW,
    ReplicationInput,
    workflow_queue,
)
from ecpds.core.ingest import ingest
from ecpds.core.models import DataFile, DataTransfer, TransferStatus, utcnow
from ecpds.core.push import PushOptions
from ecpds.workers.schedules import ensure_schedules
from ecpds.workflows.gc import GarbageCollectionInput, GarbageCollectionWorkflow
from ecpds.workflows.replication import ReplicationWorkflow

from .conftest import System


def test_deleted_and_corrupted_replicas_are_repaired(system: System) -> None:
    system.destination("mirror")
    product = system.tmp / "z500.grib"
    data = b"geopotential" * 50_000
    product.write_bytes(data)
    result = system.cli("put", str(product), "-d", "mirror", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    object_id = answer["id"]
    system.until(lambda: len(system.data_file(object_id).locations) == 3, "three copies")

    folder_b, s3 = system.store.locations[1], system.store.locations[2]
    folder_b.delete(object_id)
    s3.fs.pipe_file(s3.key(object_id), b"bit rot" + data[7:])
    assert not system.store.verify(object_id, answer["adler32"])

    output = system.loop.run(
        system.client.execute_workflow(
            ReplicationWorkflow.run,
            ReplicationInput(check=True),
            id=f"check-{system.settings.task_queue}",
            task_queue=workflow_queue(system.settings.task_queue, REPLICATION_WORKFLOW),
        )
    )
    assert (output.files, output.repaired, output.lost) == (1, 2, 0)
    assert system.store.verify(object_id, answer["adler32"])
    assert sorted(system.data_file(object_id).locations) == sorted(system.store.urls)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _ingest(system: System, name: str) -> str:
    result = asyncio.run(
        ingest(
            engine=system.engine,
            store=system.store,
            destination="gc",
            name=name,
            chunks=_chunks(name.encode() * 1000),
            options=PushOptions(lifetime=3600),
        )
    )
    system.store.repair(result.data_file.id, result.data_file.adler32 or "")
    return result.data_file.id


def test_garbage_collection_removes_exactly_what_has_expired(system: System) -> None:
    archive = system.tmp / "archive"
    system.destination("gc", backup_url=str(archive))
    expired, live, mixed, running = (_ingest(system, n) for n in ("a", "b", "c", "d"))
    assert system.store.archive(expired, str(archive), "a", system.data_file(expired).adler32)
    past = utcnow() - timedelta(hours=1)
    with session_scope(system.engine) as session:
        for data_file_id, status in ((expired, None), (running, TransferStatus.EXEC)):
            transfer = session.exec(
                select(DataTransfer).where(DataTransfer.data_file_id == data_file_id)
            ).one()
            transfer.expires = past
            transfer.status = status or transfer.status
            session.add(transfer)
        twin = session.exec(select(DataTransfer).where(DataTransfer.data_file_id == mixed)).one()
        session.add(
            DataTransfer(
                data_file_id=mixed,
                destination_id=twin.destination_id,
                target="c-copy",
                expires=past,
                status=TransferStatus.DONE,
            )
        )

    output = system.loop.run(
        system.client.execute_workflow(
            GarbageCollectionWorkflow.run,
            GarbageCollectionInput(limit=2),  # small batches: the workflow must loop over them
            id=f"gc-{system.settings.task_queue}",
            task_queue=workflow_queue(system.settings.task_queue, GARBAGE_COLLECTION_WORKFLOW),
        )
    )
    assert (output.transfers, output.files, output.objects) == (2, 1, 1)
    with Session(system.engine) as session:
        files = {f.id: f for f in session.exec(select(DataFile)).all()}
        transfers = session.exec(select(DataTransfer)).all()
    assert files[expired].deleted and files[expired].locations == []
    assert not any(loc.exists(expired) for loc in system.store.locations)
    assert (archive / "a").read_bytes() == b"a" * 1000  # archives are never collected
    for kept in (live, mixed, running):
        assert not files[kept].deleted
        assert all(loc.exists(kept) for loc in system.store.locations)
    removed = sorted((t.data_file_id, t.target) for t in transfers if t.deleted)
    assert removed == sorted([(expired, "a"), (mixed, "c-copy")])

    again = system.loop.run(
        system.client.execute_workflow(
            GarbageCollectionWorkflow.run,
            GarbageCollectionInput(),
            id=f"gc2-{system.settings.task_queue}",
            task_queue=workflow_queue(system.settings.task_queue, GARBAGE_COLLECTION_WORKFLOW),
        )
    )
    assert (again.transfers, again.files, again.objects) == (0, 0, 0)


def test_schedules_are_created_once(system: System) -> None:
    queue = system.settings.task_queue
    first = system.loop.run(ensure_schedules(system.client, system.settings))
    second = system.loop.run(ensure_schedules(system.client, system.settings))
    assert sorted(first) == sorted(
        [f"{queue}-garbage-collection", f"{queue}-store-check", f"{queue}-wake-sweep"]
    )
    assert second == []

    async def described() -> list[str]:
        names = []
        for schedule_id in first:
            handle = system.client.get_schedule_handle(schedule_id)
            description = await handle.describe()
            names.append(description.schedule.action.workflow)  # type: ignore[union-attr]
            await handle.delete()
        return names

    assert sorted(system.loop.run(described())) == [
        "GarbageCollectionWorkflow",
        "ReplicationWorkflow",
        "WakeSweepWorkflow",
    ]
