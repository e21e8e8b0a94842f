"""Ingest: stream a file into the store, register it and its transfers, hand them to dispatch.

Every front end (REST API, web, S3, FTP, SFTP) pushes through `ingest`, so a product
arrives the same way whichever door it came in by.
"""

from __future__ import annotations

import asyncio
import queue
import re
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from ecpds.core import access, catalog
from ecpds.core.db import session_scope
from ecpds.core.models import (
    DataFile,
    DataTransfer,
    DataUser,
    Destination,
    TransferStatus,
    new_data_file_id,
    utcnow,
)
from ecpds.core.store import ObjectTooLarge, Store, StoredObject

_META_PAIR = re.compile(r"^([\w.-]+)=(.*)$")
_BLOCK = 1 << 20  # bytes handed to the writer thread at a time
_IN_FLIGHT = 8  # blocks received but not yet written: bounds memory per upload


class Dispatcher(Protocol):
    """Starts the dissemination of transfers already registered in the catalog."""

    async def queue(self, transfer_ids: list[int]) -> None: ...

    async def stored(self, data_file_ids: list[str], store: Store) -> None:
        """New objects are in the store: copy them to replicas and archives."""
        ...


class IngestError(Exception):
    """Bad input for an ingest: one line; `status` is the matching HTTP code."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class IngestResult:
    data_file: DataFile
    transfer_ids: list[int] = field(default_factory=list)


def parse_metadata(text: str | None) -> dict[str, str]:
    """`k=v,k2=v2` as a dict; an empty or missing text is no metadata."""
    if not text:
        return {}
    metadata = {}
    for pair in text.split(","):
        match = _META_PAIR.match(pair.strip())
        if match is None:
            raise IngestError(f"metadata {pair!r} is not key=value (use k=v,k2=v2)")
        metadata[match.group(1)] = match.group(2)
    return metadata


@dataclass
class _Plan:
    """What the catalog step will register, decided before any byte is stored."""

    destination: Destination
    max_size: int
    transfers: list[DataTransfer]


def _plan(
    session: Session,
    *,
    destination: str,
    target: str,
    user: DataUser | None,
    priority: int | None,
    lifetime: int | None,
    delay: int | None,
    at: datetime | None,
    standby: bool | None,
    reqid: str | None,
) -> _Plan:
    dest = catalog.find_destination(session, name=destination)
    # Same answer for "absent" and "not yours" (policies included): names are not disclosed.
    if dest is None or (
        user is not None and destination not in access.user_destinations(session, user=user)
    ):
        raise IngestError(f"unknown destination {destination!r}", 404)
    if priority is not None and not 0 <= priority <= 99:
        raise IngestError(f"priority {priority} is out of range 0..99")
    if lifetime is not None and lifetime <= 0:
        raise IngestError(f"lifetime {lifetime} must be a positive number of seconds")
    if delay is not None and delay < 0:
        raise IngestError(f"delay {delay} must not be negative")
    if at is not None and delay:
        raise IngestError("give either a delay or a time (at), not both")
    if not target or target.endswith("/") or "\0" in target:
        raise IngestError(f"target {target!r} is not a file name")
    if (
        dest.max_pending
        and catalog.pending_transfers(session, destination=dest) >= dest.max_pending
    ):
        raise IngestError(
            f"destination {destination!r} already has {dest.max_pending} pending transfers"
            " (max_pending)",
            429,
        )
    if (
        reqid is not None
        and session.exec(select(DataFile.id).where(DataFile.reqid == reqid)).first()
    ):
        raise IngestError(f"request id {reqid!r} was already used", 409)

    now = utcnow()
    start = at if at is not None else now + timedelta(seconds=delay or 0)
    if start.tzinfo is None:
        raise IngestError("time (at) needs a time zone, e.g. 2030-01-01T06:00:00Z")
    transfers = []
    legs = [(dest, target, None)] + catalog.aliases_for(session, destination=dest, target=target)
    for leg_dest, leg_target, alias in legs:
        seconds = lifetime or (alias and alias.lifetime) or leg_dest.default_lifetime
        scheduled = start + timedelta(seconds=alias.delay if alias else 0)
        expires = scheduled + timedelta(seconds=seconds)
        if expires <= now:
            raise IngestError(f"the transfer to {leg_dest.name!r} would expire before it starts")
        if standby or not catalog.has_dissemination_hosts(session, destination=leg_dest):
            status = TransferStatus.HOLD
        elif scheduled > now:
            status = TransferStatus.SCHE
        else:
            status = TransferStatus.WAIT
        assert leg_dest.id is not None
        transfers.append(
            DataTransfer(
                data_file_id="",
                destination_id=leg_dest.id,
                target=leg_target,
                priority=_first(priority, alias and alias.priority, leg_dest.default_priority),
                scheduled=scheduled,
                expires=expires,
                status=status,
            )
        )
    return _Plan(destination=dest, max_size=dest.max_file_size, transfers=transfers)


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
    store: Store, object_id: str, chunks: AsyncIterable[bytes], *, max_size: int = 0
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
            stored = store.write(object_id, received(), max_size=max_size)
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


def _first(*values: int | None) -> int:
    return next(v for v in values if v is not None)


def _register(engine: Engine, data_file: DataFile, transfers: list[DataTransfer]) -> list[int]:
    with session_scope(engine) as session:
        session.add(data_file)
        session.flush()
        for transfer in transfers:
            transfer.data_file_id = data_file.id
            session.add(transfer)
        session.flush()
        ids = [t.id for t in transfers if t.id is not None]
    return ids


async def ingest(
    *,
    engine: Engine,
    store: Store,
    destination: str,
    name: str,
    chunks: AsyncIterable[bytes],
    user: DataUser | None = None,
    target: str | None = None,
    priority: int | None = None,
    lifetime: int | None = None,
    delay: int | None = None,
    at: datetime | None = None,
    standby: bool | None = None,
    metadata: dict[str, str] | None = None,
    group: str | None = None,
    reqid: str | None = None,
    dispatcher: Dispatcher | None = None,
) -> IngestResult:
    """Store the bytes of `chunks` and register one transfer per destination and alias.

    Nothing is left behind when it fails: the object is removed if the catalog step
    fails. Transfers not on hold are handed to `dispatcher`.
    """
    if not name or "/" in name or "\0" in name:
        raise IngestError(f"file name {name!r} is not a plain file name")

    def plan() -> _Plan:
        with Session(engine) as session:
            return _plan(
                session,
                destination=destination,
                target=target or name,
                user=user,
                priority=priority,
                lifetime=lifetime,
                delay=delay,
                at=at,
                standby=standby,
                reqid=reqid,
            )

    planned = await asyncio.to_thread(plan)
    object_id = new_data_file_id()
    try:
        stored = await store_stream(store, object_id, chunks, max_size=planned.max_size)
    except ObjectTooLarge as exc:
        raise IngestError(f"destination {destination!r}: {exc}", 413) from exc
    now = utcnow()
    data_file = DataFile(
        id=object_id,
        name=name,
        size=stored.size,
        md5=stored.md5,
        adler32=stored.adler32,
        meta=dict(metadata or {}),
        group=group,
        reqid=reqid,
        arrived=now,
        expires=max(t.expires for t in planned.transfers),
        locations=stored.locations,
    )
    try:
        ids = await asyncio.to_thread(_register, engine, data_file, planned.transfers)
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
            await dispatcher.queue(queued)
        await dispatcher.stored([data_file.id], store)
    return IngestResult(data_file=data_file, transfer_ids=ids)
