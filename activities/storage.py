"""Store activities: fetch sources into the store, replicate and repair copies, back up,
collect garbage.

Source credentials are looked up here, from the host that covers the source URL, and
never appear in an input, output or error of these activities.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import posixpath
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, String, cast, update
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ecpds.activities.heartbeat import heartbeating
from ecpds.core import catalog
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
from ecpds.core.notifications import Doors, announce_stored, wants_sha512
from ecpds.core.protocols import ProtocolError, parse_url
from ecpds.core.retrieval import Integrity
from ecpds.core.secrets import CredentialBox
from ecpds.core.settings import get_settings
from ecpds.core.sources import Source, SourceConnections, resolve_source
from ecpds.core.store import ObjectTooLarge, Store, StoredObject, StoreError

T = TypeVar("T")
THREADS = 32
DEFAULT_CONNECTIONS = 4  # a source's connections when neither host nor destination says
COMMIT_FILES = 200  # fetched files recorded in one catalog transaction, at most
COMMIT_EVERY = 0.5  # seconds: fetched files wait no longer than this to be recorded
# Statuses of a transfer that is using its file right now: never collected.
RUNNING = frozenset({TransferStatus.EXEC, TransferStatus.FETC})


@dataclass
class FetchFilesInput:
    data_file_ids: list[str]
    destination: str = ""  # whose max_connections applies when the source host has none


@dataclass
class FetchFailure:
    data_file_id: str
    error: str  # one line, never a secret
    retryable: bool = False


@dataclass
class FetchFilesOutput:
    fetched: list[str] = field(default_factory=list)  # in the store (now or already)
    transfer_ids: list[int] = field(default_factory=list)  # released: to queue
    copies: list[str] = field(default_factory=list)  # fetched, wanted by replicas or archives
    failed: list[FetchFailure] = field(default_factory=list)
    bytes: int = 0


@dataclass
class FailRetrievalsInput:
    failures: list[FetchFailure]


@dataclass
class _Fetch:
    """One file to fetch within an activity (credentials stay in the worker)."""

    data_file_id: str
    source: Source
    integrity: Integrity | None
    connections: int
    max_size: int = 0  # the destination's max_file_size (0: no limit)
    sha512: bool = False  # computed while fetching: a WIS2 announcement needs it


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
        self,
        engine: Engine,
        store: Store,
        box: CredentialBox,
        task_queue: str = "",
        doors: Doors | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.box = box
        self.doors = doors or Doors.of(get_settings())
        self.task_queue = task_queue
        self.sources = SourceConnections()
        # Fetches wait on the network, not the CPU: more threads than asyncio's default.
        self.pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="storage")

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking `fn` in a thread, heartbeating while it runs."""
        return await heartbeating(self.pool, fn, *args, **kwargs)

    # --- retrieval --------------------------------------------------------------------------

    @activity.defn
    async def fetch_files(self, request: FetchFilesInput) -> FetchFilesOutput:
        """Fetch the files' sources into the store, many at a time, and release their transfers.

        A file that fails is reported in `failed` (retryable or not) and the others go on;
        the activity itself fails only when the catalog or the worker does.
        """
        cancelled = threading.Event()
        try:
            return await self._run(self._fetch_files, request, cancelled)
        finally:
            cancelled.set()  # the threads start no new file once the activity is gone

    def _fetch_files(
        self, request: FetchFilesInput, cancelled: threading.Event
    ) -> FetchFilesOutput:
        out = FetchFilesOutput()
        todo = self._prepare(request, out)
        if todo:
            threads = min(THREADS, len(todo), max(f.connections for f in todo))
            with ThreadPoolExecutor(threads, thread_name_prefix="fetch") as pool:
                futures = [pool.submit(self._fetch_one, f, cancelled) for f in todo]
                ready: list[tuple[str, StoredObject]] = []
                last = time.monotonic()
                try:
                    for future in as_completed(futures):
                        data_file_id, result = future.result()
                        if isinstance(result, FetchFailure):
                            out.failed.append(result)
                        else:
                            ready.append((data_file_id, result))
                        # Commit in groups: a catalog transaction per small file would cost
                        # more than its fetch.
                        if ready and (
                            len(ready) >= COMMIT_FILES or time.monotonic() - last > COMMIT_EVERY
                        ):
                            self._commit(ready, out)
                            ready, last = [], time.monotonic()
                    if ready:
                        self._commit(ready, out)
                except BaseException:
                    cancelled.set()  # the catalog failed: the attempt that follows fetches
                    raise
        out.copies = self._wanting_copies(out.fetched)
        return out

    def _prepare(self, request: FetchFilesInput, out: FetchFilesOutput) -> list[_Fetch]:
        """What is to fetch, by whom; files already in, gone or unreadable go to `out`."""
        todo: list[_Fetch] = []
        with session_scope(self.engine) as session:
            files = {
                f.id: f
                for f in session.exec(
                    select(DataFile).where(col(DataFile.id).in_(request.data_file_ids))
                ).all()
            }
            destination = (
                catalog.find_destination(session, name=request.destination)
                if request.destination
                else None
            )
            fallback = destination.max_connections if destination else DEFAULT_CONNECTIONS
            max_size = destination.max_file_size if destination else 0
            sha512 = destination is not None and wants_sha512(session, [destination.id])
            folders: dict[str, Source | ProtocolError] = {}
            arrived: list[str] = []
            for data_file_id in request.data_file_ids:
                data_file = files.get(data_file_id)
                if data_file is None or data_file.deleted:
                    out.failed.append(
                        FetchFailure(data_file_id, f"data file {data_file_id} is gone")
                    )
                    continue
                if data_file.arrived is not None:
                    arrived.append(data_file_id)  # an attempt that stored it died after
                    continue
                if not data_file.source:
                    out.failed.append(
                        FetchFailure(data_file_id, f"data file {data_file_id} has no source")
                    )
                    continue
                try:
                    integrity = _integrity(data_file.meta)
                    folder = data_file.source.rsplit("/", 1)[0]
                    if folder not in folders:
                        try:
                            folders[folder] = resolve_source(session, self.box, data_file.source)
                        except ProtocolError as exc:
                            folders[folder] = exc
                    found = folders[folder]
                    if isinstance(found, ProtocolError):
                        raise found
                    name = posixpath.basename(parse_url(data_file.source).path)
                except ProtocolError as exc:
                    out.failed.append(FetchFailure(data_file_id, str(exc), exc.retryable))
                    continue
                source = replace(found, file_name=name)
                connections = source.max_connections or fallback
                given = integrity is not None and integrity.method == "sha512"
                todo.append(
                    _Fetch(
                        data_file_id, source, integrity, connections, max_size, sha512 and not given
                    )
                )
            if arrived:
                out.fetched += arrived
                out.transfer_ids += _transfer_ids(
                    session, arrived, {TransferStatus.WAIT, TransferStatus.SCHE}
                )
            if todo:
                session.execute(
                    update(DataTransfer)
                    .where(col(DataTransfer.data_file_id).in_([f.data_file_id for f in todo]))
                    .where(col(DataTransfer.deleted).is_(False))
                    .where(col(DataTransfer.status) == TransferStatus.INIT)
                    .values(status=TransferStatus.FETC)
                )
        return todo

    def _fetch_one(
        self, fetch: _Fetch, cancelled: threading.Event
    ) -> tuple[str, StoredObject | FetchFailure]:
        """One file into the store; whatever goes wrong is that file's failure alone."""
        data_file_id = fetch.data_file_id
        if cancelled.is_set():
            return data_file_id, FetchFailure(data_file_id, "fetch cancelled", retryable=True)
        try:
            # Closed at once when the store gives up, so the connection is not left mid-read.
            with contextlib.closing(
                self.sources.read(fetch.source, limit=fetch.connections)
            ) as chunks:
                checked = fetch.integrity.checked(chunks) if fetch.integrity else chunks
                with contextlib.closing(checked) as stream:
                    try:
                        stored = self.store.write(
                            data_file_id, stream, max_size=fetch.max_size, sha512=fetch.sha512
                        )
                    except ObjectTooLarge:
                        raise
                    except StoreError:
                        started = inspect.getgeneratorstate(chunks) != inspect.GEN_CREATED
                        if started or not self.store.primary.exists(data_file_id):
                            raise
                        # A copy left by an attempt that died between the store and the
                        # catalog (the store refuses before reading a byte): replace it.
                        self.store.delete(data_file_id)
                        stored = self.store.write(
                            data_file_id, stream, max_size=fetch.max_size, sha512=fetch.sha512
                        )
        except ProtocolError as exc:
            return data_file_id, FetchFailure(data_file_id, str(exc), exc.retryable)
        except ObjectTooLarge as exc:
            return data_file_id, FetchFailure(data_file_id, f"not stored: {exc}", False)
        except (StoreError, OSError) as exc:
            text = " ".join(str(exc).split()) or type(exc).__name__
            return data_file_id, FetchFailure(data_file_id, f"storing the file: {text}", True)
        return data_file_id, stored

    def _commit(self, ready: list[tuple[str, StoredObject]], out: FetchFilesOutput) -> None:
        """Record fetched files in the catalog and release their transfers, in one go."""
        stored = dict(ready)
        now = utcnow()
        gone: list[str] = []
        with session_scope(self.engine) as session:
            files = session.exec(select(DataFile).where(col(DataFile.id).in_(list(stored)))).all()
            kept: list[str] = []
            landed: dict[str, DataFile] = {}  # stored by this commit: to announce
            for data_file in files:
                if data_file.deleted:
                    gone.append(data_file.id)
                    continue
                kept.append(data_file.id)
                if data_file.arrived is not None:
                    continue  # a second fetch of the same file finished first
                new = stored[data_file.id]
                data_file.size = new.size
                data_file.md5 = new.md5
                data_file.adler32 = new.adler32
                data_file.arrived = now
                data_file.locations = new.locations
                data_file.sha512 = new.sha512 or _sha512_of(data_file.meta)
                session.add(data_file)
                landed[data_file.id] = data_file
            gone += [i for i in stored if i not in kept and i not in gone]
            # Every live transfer of the files: FETC ones are released, and all (held ones
            # too) name the destinations that announce the file.
            live: dict[str, list[DataTransfer]] = {}
            for transfer in session.exec(
                select(DataTransfer)
                .where(col(DataTransfer.data_file_id).in_(kept))
                .where(col(DataTransfer.deleted).is_(False))
            ).all():
                live.setdefault(transfer.data_file_id, []).append(transfer)
                if transfer.status != TransferStatus.FETC:
                    continue
                transfer.status = (
                    TransferStatus.SCHE if transfer.scheduled > now else TransferStatus.WAIT
                )
                transfer.queued = now
                session.add(transfer)
                if transfer.id is not None:
                    out.transfer_ids.append(transfer.id)
            for data_file_id, data_file in landed.items():
                announce_stored(
                    session,
                    doors=self.doors,
                    data_file=data_file,
                    transfers=live.get(data_file_id, []),
                )
        out.fetched += kept
        out.bytes += sum(stored[i].size for i in kept)
        for data_file_id in gone:
            self.store.delete(data_file_id)
            out.failed.append(FetchFailure(data_file_id, f"data file {data_file_id} is gone"))

    def _wanting_copies(self, data_file_ids: list[str]) -> list[str]:
        """Those of the files that replicas or a destination's archive want a copy of."""
        if not data_file_ids or len(self.store.locations) > 1:
            return list(data_file_ids)
        with Session(self.engine) as session:
            archived = set(
                session.exec(
                    select(DataTransfer.data_file_id)
                    .join(Destination, col(DataTransfer.destination_id) == col(Destination.id))
                    .where(col(DataTransfer.data_file_id).in_(data_file_ids))
                    .where(col(Destination.backup_url).is_not(None))
                ).all()
            )
        return [i for i in data_file_ids if i in archived]

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
    async def fail_retrievals(self, request: FailRetrievalsInput) -> None:
        """Mark the transfers of files that never arrived failed, each with its reason."""

        def fail() -> None:
            waiting = {TransferStatus.INIT, TransferStatus.FETC, TransferStatus.HOLD}
            reasons = {f.data_file_id: f.error[:1000] for f in request.failures}
            now = utcnow()
            with session_scope(self.engine) as session:
                for transfer in session.exec(
                    select(DataTransfer)
                    .join(DataFile, col(DataFile.id) == col(DataTransfer.data_file_id))
                    .where(col(DataTransfer.data_file_id).in_(list(reasons)))
                    .where(col(DataFile.arrived).is_(None))
                    .where(col(DataTransfer.deleted).is_(False))
                    .where(col(DataTransfer.status).in_(list(waiting)))
                ).all():
                    transfer.status = TransferStatus.FAIL
                    transfer.last_error = reasons[transfer.data_file_id]
                    transfer.finished = now
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


def _transfer_ids(
    session: Session, data_file_ids: list[str], statuses: set[TransferStatus]
) -> list[int]:
    return [
        i
        for i in session.exec(
            select(DataTransfer.id)
            .where(col(DataTransfer.data_file_id).in_(data_file_ids))
            .where(col(DataTransfer.deleted).is_(False))
            .where(col(DataTransfer.status).in_(list(statuses)))
        ).all()
        if i is not None
    ]


def _sha512_of(meta: dict[str, Any] | None) -> str | None:
    """The SHA-512 (hex) a WIS2 integrity in the metadata gave, checked by the fetch."""
    try:
        integrity = _integrity(meta)
    except ProtocolError:
        return None
    if integrity is None or integrity.method != "sha512":
        return None
    return base64.b64decode(integrity.value).hex()


def _integrity(meta: dict[str, Any] | None) -> Integrity | None:
    """The WIS2 integrity value the file's metadata asks to check, if any."""
    text = (meta or {}).get("integrity")
    return Integrity.parse(str(text)) if text else None
