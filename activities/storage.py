"""Store activities: fetch a source into the store, replicate and repair copies, back up,
collect garbage.

Source credentials are looked up here, from the host that covers the source URL, and
never appear in an input, output or error of these activities.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, String, cast
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ecpds.core.db import session_scope
from ecpds.core.dispatch import SweepOutput, TemporalDispatcher
from ecpds.core.models import (
    FINAL_STATUSES,
    DataFile,
    DataTransfer,
    Destination,
    TransferStatus,
    utcnow,
)
from ecpds.core.protocols import ProtocolError
from ecpds.core.secrets import CredentialBox
from ecpds.core.sources import SourceConnections, resolve_source
from ecpds.core.store import CHUNK, Store, StoreError

T = TypeVar("T")
HEARTBEAT_EVERY = 1.0
THREADS = 32
# Statuses of a transfer that is using its file right now: never collected.
RUNNING = frozenset({TransferStatus.EXEC, TransferStatus.FETC})


@dataclass
class FetchResult:
    size: int
    md5: str
    adler32: str
    transfer_ids: list[int] = field(default_factory=list)  # to queue for dissemination
    copies: bool = True  # whether replicas or archives want the new object


@dataclass
class FailInput:
    data_file_id: str
    error: str


@dataclass
class ReplicateInput:
    data_file_ids: list[str]
    check: bool = False  # read every copy and compare ADLER32 (else: present is good)


@dataclass
class ReplicateResult:
    files: int = 0
    repaired: int = 0
    lost: int = 0  # copies with no good copy left to repair them from


@dataclass
class FilePage:
    after: str = ""
    limit: int = 200


@dataclass
class GcInput:
    now: float  # epoch seconds, from the workflow's clock
    limit: int = 1000


@dataclass
class GcReport:
    transfers: int = 0
    files: int = 0
    objects: int = 0
    more: bool = False


class StorageActivities:
    """Built once per worker with the catalog, the store and the credential key."""

    def __init__(
        self, engine: Engine, store: Store, box: CredentialBox, task_queue: str = ""
    ) -> None:
        self.engine = engine
        self.store = store
        self.box = box
        self.task_queue = task_queue
        self.sources = SourceConnections()
        # Fetches wait on the network, not the CPU: more threads than asyncio's default.
        self.pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="storage")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking `fn` in a thread, heartbeating while it runs."""
        future = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        task = asyncio.ensure_future(future)
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY)
            if done:
                return task.result()
            activity.heartbeat()

    # --- retrieval --------------------------------------------------------------------------

    @activity.defn
    async def fetch(self, data_file_id: str) -> FetchResult:
        """Fetch the file's source into the store and release its transfers."""
        return await self._run(self._fetch, data_file_id)

    def _fetch(self, data_file_id: str) -> FetchResult:
        with session_scope(self.engine) as session:
            data_file = session.get(DataFile, data_file_id)
            if data_file is None or data_file.deleted:
                raise ApplicationError(f"data file {data_file_id} is gone", non_retryable=True)
            if data_file.arrived is not None:
                # An attempt that stored it died before answering: queueing is idempotent.
                waiting = _transfers(
                    session, data_file_id, {TransferStatus.WAIT, TransferStatus.SCHE}
                )
                return FetchResult(
                    data_file.size,
                    data_file.md5 or "",
                    data_file.adler32 or "",
                    [t.id for t in waiting if t.id is not None],
                )
            if not data_file.source:
                raise ApplicationError(
                    f"data file {data_file_id} has no source", non_retryable=True
                )
            _set_status(session, data_file_id, {TransferStatus.INIT}, TransferStatus.FETC)
            try:
                source = resolve_source(session, self.box, data_file.source)
            except ProtocolError as exc:
                raise ApplicationError(str(exc), non_retryable=not exc.retryable) from None
        # A copy left by an attempt that died between the store and the catalog.
        self.store.delete(data_file_id)
        try:
            remote, reader = self.sources.open(source)
        except ProtocolError as exc:
            raise ApplicationError(str(exc), non_retryable=not exc.retryable) from None
        try:
            with reader:
                stored = self.store.write(data_file_id, _chunks(reader))
        except StoreError as exc:
            raise ApplicationError(str(exc)) from None
        except OSError as exc:
            self.sources.drop(source)
            raise ApplicationError(remote.to_protocol_error(exc, "reading").args[0]) from None
        now = utcnow()
        with session_scope(self.engine) as session:
            data_file = session.get(DataFile, data_file_id)
            if data_file is None or data_file.deleted:
                self.store.delete(data_file_id)
                raise ApplicationError(f"data file {data_file_id} is gone", non_retryable=True)
            data_file.size = stored.size
            data_file.md5 = stored.md5
            data_file.adler32 = stored.adler32
            data_file.arrived = now
            data_file.locations = stored.locations
            session.add(data_file)
            released = []
            for transfer in _transfers(session, data_file_id, {TransferStatus.FETC}):
                transfer.status = (
                    TransferStatus.SCHE if transfer.scheduled > now else TransferStatus.WAIT
                )
                transfer.queued = now
                session.add(transfer)
                if transfer.id is not None:
                    released.append(transfer.id)
        return FetchResult(
            stored.size, stored.md5, stored.adler32, released, self._wants_copies(data_file_id)
        )

    def _wants_copies(self, data_file_id: str) -> bool:
        if len(self.store.locations) > 1:
            return True
        with Session(self.engine) as session:
            archive = session.exec(
                select(Destination.id)
                .join(DataTransfer, col(DataTransfer.destination_id) == col(Destination.id))
                .where(DataTransfer.data_file_id == data_file_id)
                .where(col(Destination.backup_url).is_not(None))
            ).first()
        return archive is not None

    @activity.defn
    async def queue_transfers(self, transfer_ids: list[int]) -> None:
        """Hand released transfers to their destinations' schedulers."""
        dispatcher = TemporalDispatcher(activity.client(), self.task_queue, self.engine)
        await dispatcher.queue(transfer_ids)

    @activity.defn
    async def wake_sweep(self, limit: int) -> SweepOutput:
        """Wake the destinations with waiting transfers and start unfetched retrievals."""
        dispatcher = TemporalDispatcher(activity.client(), self.task_queue, self.engine)
        return await dispatcher.sweep(limit=limit)

    @activity.defn
    async def fail_retrieval(self, request: FailInput) -> None:
        """Mark the transfers of a file that never arrived failed, with the reason."""

        def fail() -> None:
            waiting = {TransferStatus.INIT, TransferStatus.FETC, TransferStatus.HOLD}
            with session_scope(self.engine) as session:
                data_file = session.get(DataFile, request.data_file_id)
                if data_file is None or data_file.arrived is not None:
                    return
                for transfer in _transfers(session, request.data_file_id, waiting):
                    transfer.status = TransferStatus.FAIL
                    transfer.last_error = request.error[:1000]
                    transfer.finished = utcnow()
                    session.add(transfer)

        await asyncio.to_thread(fail)

    # --- replication and backup ---------------------------------------------------------------

    @activity.defn
    async def replicate(self, request: ReplicateInput) -> ReplicateResult:
        """Give every store location a good copy of each file, and record where they are."""
        return await self._run(self._replicate, request)

    def _replicate(self, request: ReplicateInput) -> ReplicateResult:
        result = ReplicateResult()
        for data_file_id in request.data_file_ids:
            with Session(self.engine) as session:
                data_file = session.get(DataFile, data_file_id)
                if data_file is None or data_file.deleted or not data_file.adler32:
                    continue
                adler32 = data_file.adler32
            repair = self.store.repair(data_file_id, adler32, check=request.check)
            with session_scope(self.engine) as session:
                data_file = session.get(DataFile, data_file_id)
                if data_file is None or data_file.deleted:
                    continue
                data_file.locations = repair.locations
                session.add(data_file)
            result.files += 1
            result.repaired += len(repair.repaired)
            result.lost += len(repair.lost)
            if repair.lost:
                activity.logger.warning(
                    "data file %s: no good copy to repair %s from", data_file_id, repair.lost
                )
        return result

    @activity.defn
    async def files_to_check(self, page: FilePage) -> list[str]:
        """The next page of stored data files, by id, for a sweep over the whole store."""

        def ids() -> list[str]:
            with Session(self.engine) as session:
                return list(
                    session.exec(
                        select(DataFile.id)
                        .where(col(DataFile.deleted).is_(False))
                        .where(col(DataFile.arrived).is_not(None))
                        .where(col(DataFile.id) > page.after)
                        .order_by(col(DataFile.id))
                        .limit(page.limit)
                    ).all()
                )

        return await asyncio.to_thread(ids)

    @activity.defn
    async def backup(self, data_file_ids: list[str]) -> int:
        """Write each file once to the archive of every destination that has one."""
        return await self._run(self._backup, data_file_ids)

    def _backup(self, data_file_ids: list[str]) -> int:
        written = 0
        for data_file_id in data_file_ids:
            with Session(self.engine) as session:
                data_file = session.get(DataFile, data_file_id)
                if data_file is None or data_file.deleted or not data_file.adler32:
                    continue
                rows = session.exec(
                    select(DataTransfer.target, Destination.backup_url)
                    .join(Destination, col(Destination.id) == col(DataTransfer.destination_id))
                    .where(DataTransfer.data_file_id == data_file_id)
                    .where(col(Destination.backup_url).is_not(None))
                ).all()
                adler32 = data_file.adler32
            for target, url in {(t, u) for t, u in rows if u}:
                try:
                    written += self.store.archive(data_file_id, url, target, adler32)
                except (StoreError, OSError) as exc:
                    raise ApplicationError(f"backup of {data_file_id} to {url}: {exc}") from None
        return written

    # --- garbage collection -----------------------------------------------------------------

    @activity.defn
    async def collect_garbage(self, request: GcInput) -> GcReport:
        """Remove expired transfers, then files with no live transfer, then their bytes."""
        return await self._run(self._collect, request)

    def _collect(self, request: GcInput) -> GcReport:
        now = datetime.fromtimestamp(request.now, UTC)
        report = GcReport()
        with session_scope(self.engine) as session:
            expired = session.exec(
                select(DataTransfer)
                .where(col(DataTransfer.deleted).is_(False))
                .where(col(DataTransfer.expires) <= now)
                .where(col(DataTransfer.status).not_in(list(RUNNING)))
                .limit(request.limit)
            ).all()
            for transfer in expired:
                transfer.deleted = True
                if transfer.status not in FINAL_STATUSES:
                    transfer.status = TransferStatus.STOP
                    transfer.last_error = "expired"
                session.add(transfer)
            report.transfers = len(expired)
        with session_scope(self.engine) as session:
            live = select(DataTransfer.data_file_id).where(col(DataTransfer.deleted).is_(False))
            orphans = session.exec(
                select(DataFile)
                .where(col(DataFile.deleted).is_(False))
                .where(col(DataFile.id).not_in(live))
                .limit(request.limit)
            ).all()
            for data_file in orphans:
                data_file.deleted = True
                session.add(data_file)
            report.files = len(orphans)
        with Session(self.engine) as session:
            gone = session.exec(
                select(DataFile)
                .where(col(DataFile.deleted).is_(True))
                .where(col(DataFile.id).not_in(live))
                .where(cast(DataFile.locations, String) != "[]")
                .limit(request.limit)
            ).all()
            holding = [f.id for f in gone]
        for data_file_id in holding:
            self.store.delete(data_file_id)
            with session_scope(self.engine) as session:
                data_file = session.get(DataFile, data_file_id)
                if data_file is not None:
                    data_file.locations = []
                    session.add(data_file)
            report.objects += 1
        report.more = (
            max(report.transfers, report.files) >= request.limit or len(holding) >= request.limit
        )
        return report


def _transfers(
    session: Session, data_file_id: str, statuses: set[TransferStatus]
) -> list[DataTransfer]:
    return list(
        session.exec(
            select(DataTransfer)
            .where(DataTransfer.data_file_id == data_file_id)
            .where(col(DataTransfer.deleted).is_(False))
            .where(col(DataTransfer.status).in_(list(statuses)))
        ).all()
    )


def _set_status(
    session: Session, data_file_id: str, old: set[TransferStatus], new: TransferStatus
) -> None:
    for transfer in _transfers(session, data_file_id, old):
        transfer.status = new
        session.add(transfer)


def _chunks(reader: Any) -> Iterator[bytes]:
    while chunk := reader.read(CHUNK):
        yield chunk
