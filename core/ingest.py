"""Ingest: stream a file into the store, register it and its transfers, hand them to dispatch.

Every front end (REST API, web, S3, FTP, SFTP) pushes through `ingest`, so a product
arrives the same way whichever door it came in by.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from ecpds.core.db import session_scope
from ecpds.core.dispatch import SWEEP_LATER, best_effort
from ecpds.core.models import (
    DataFile,
    DataTransfer,
    DataUser,
    TransferStatus,
    new_data_file_id,
    utcnow,
)
from ecpds.core.notifications import Doors, announce_stored, wants_sha512
from ecpds.core.push import IngestError, PushOptions, PushPlan, check_file_name, plan_push
from ecpds.core.store import ObjectTooLarge, Store, StoredObject

_BLOCK = 1 << 20  # bytes handed to the writer thread at a time
_IN_FLIGHT = 8  # blocks received but not yet written: bounds memory per upload


class Dispatcher(Protocol):
    """Starts the dissemination of transfers already registered in the catalog."""

    async def queue(self, transfer_ids: list[int]) -> None: ...

    async def stored(self, data_file_ids: list[str], store: Store) -> None:
        """New objects are in the store: copy them to replicas and archives."""
        ...


@dataclass
class IngestResult:
    data_file: DataFile
    transfer_ids: list[int] = field(default_factory=list)


class UploadBrokenOff(Exception):
    """The incoming stream failed before its end; nothing was kept."""


async def _blocks(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) >= _BLOCK:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


async def store_stream(
    store: Store,
    object_id: str,
    chunks: AsyncIterable[bytes],
    *,
    max_size: int = 0,
    sha512: bool = False,
) -> StoredObject:
    """`Store.write` in a thread of its own, fed from the async stream.

    The event loop keeps receiving (and decrypting) while the thread hashes and writes,
    and other requests are not held up by disk writes.
    """
    loop = asyncio.get_running_loop()
    pipe: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
    room = asyncio.Semaphore(_IN_FLIGHT)
    result: asyncio.Future[StoredObject] = loop.create_future()

    def settle(stored: StoredObject | None, error: BaseException | None) -> None:
        if error is not None:
            result.set_exception(error)
        else:
            assert stored is not None
            result.set_result(stored)
        for _ in range(_IN_FLIGHT):
            room.release()  # wake the receiving side, which sees `result` is done

    def received() -> Iterator[bytes]:
        while (item := pipe.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            loop.call_soon_threadsafe(room.release)
            yield item

    def write() -> None:
        try:
            stored = store.write(object_id, received(), max_size=max_size, sha512=sha512)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, stored, None)

    threading.Thread(target=write, name=f"store-{object_id}", daemon=True).start()
    try:
        async for block in _blocks(chunks):
            await room.acquire()
            if result.done():
                break
            pipe.put(block)
    except BaseException as exc:
        pipe.put(UploadBrokenOff(f"the upload broke off: {exc!r}"))
        await asyncio.wait([result])  # the writer has removed its partial object
        result.exception()  # its error is this one, seen from the writer's side
        raise
    pipe.put(None)
    return await result


def _register(
    engine: Engine, data_file: DataFile, transfers: list[DataTransfer], doors: Doors | None
) -> list[int]:
    with session_scope(engine) as session:
        session.add(data_file)
        session.flush()
        for transfer in transfers:
            transfer.data_file_id = data_file.id
            session.add(transfer)
        session.flush()
        ids = [t.id for t in transfers if t.id is not None]
        if doors is not None:
            announce_stored(session, doors=doors, data_file=data_file, transfers=transfers)
    return ids


async def ingest(
    *,
    engine: Engine,
    store: Store,
    destination: str,
    name: str,
    chunks: AsyncIterable[bytes],
    user: DataUser | None = None,
    options: PushOptions | None = None,
    dispatcher: Dispatcher | None = None,
    doors: Doors | None = None,
) -> IngestResult:
    """Store the bytes of `chunks` and register one transfer per destination and alias.

    Nothing is left behind when it fails: the object is removed if the catalog step
    fails. With `doors`, the destinations that announce stored products get their
    notifications in the same transaction. Once the catalog has committed, the push has
    succeeded: transfers not on hold are handed to `dispatcher` if it answers in time,
    else to the next sweep.
    """
    check_file_name(name)
    given = options or PushOptions()
    push = replace(given, target=given.target or name)

    def plan() -> tuple[PushPlan, bool]:
        with Session(engine) as session:
            planned = plan_push(session, destination=destination, options=push, user=user)
            sha512 = doors is not None and wants_sha512(
                session, (t.destination_id for t in planned.transfers)
            )
            return planned, sha512

    planned, sha512 = await asyncio.to_thread(plan)
    object_id = new_data_file_id()
    try:
        stored = await store_stream(
            store, object_id, chunks, max_size=planned.max_size, sha512=sha512
        )
    except ObjectTooLarge as exc:
        raise IngestError(f"destination {destination!r}: {exc}", 413) from exc
    now = utcnow()
    data_file = DataFile(
        id=object_id,
        name=name,
        size=stored.size,
        md5=stored.md5,
        adler32=stored.adler32,
        sha512=stored.sha512,
        meta=dict(push.metadata),
        group=push.group,
        reqid=push.reqid,
        arrived=now,
        expires=max(t.expires for t in planned.transfers),
        locations=stored.locations,
    )
    try:
        ids = await asyncio.to_thread(_register, engine, data_file, planned.transfers, doors)
    except BaseException as exc:
        await asyncio.to_thread(store.delete, object_id)
        if isinstance(exc, IntegrityError):
            reason = str(exc.orig).splitlines()[0]
            raise IngestError(f"file {name!r} conflicts with the catalog: {reason}", 409) from exc
        raise
    if dispatcher is not None:
        queued = [
            t.id for t in planned.transfers if t.id is not None and t.status != TransferStatus.HOLD
        ]
        if queued:
            await best_effort(
                dispatcher.queue(queued),
                what=f"waking the schedulers of data file {data_file.id}",
                later=SWEEP_LATER,
            )
        await best_effort(
            dispatcher.stored([data_file.id], store),
            what=f"copying data file {data_file.id} to replicas and archives",
            later="the daily store check makes its replicas",
        )
    return IngestResult(data_file=data_file, transfer_ids=ids)
