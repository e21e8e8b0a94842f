"""Dissemination activities: a scheduler's settings, queue reads and status writes; transmit.

Host credentials are read from the catalog and decrypted here, by host id, and never
leave this module: no input, output or error message of these activities carries them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ecpds.core import queue
from ecpds.core.db import session_scope
from ecpds.core.dispatch import Operation
from ecpds.core.models import (
    DataFile,
    DataTransfer,
    Destination,
    DestinationHost,
    Host,
    HostKind,
    TransferStatus,
)
from ecpds.core.naming import NamingError, target_path
from ecpds.core.protocols import ProtocolError
from ecpds.core.queue import QueueWindow
from ecpds.core.secrets import CredentialBox, CredentialError
from ecpds.core.store import Store, StoreError
from ecpds.core.transmit import SendRequest, SendResult, partial_offset, send

T = TypeVar("T")
HEARTBEAT_EVERY = 1.0


@dataclass
class HostRef:
    """A host as the scheduler sees it: no URL secrets, no credentials."""

    id: int
    name: str
    retry_count: int
    retry_frequency: int
    max_connections: int = 0  # 0: the destination's


@dataclass
class DestinationConfig:
    name: str
    id: int = 0
    exists: bool = True
    active: bool = True
    on_hold: bool = False
    max_connections: int = 4
    retry_count: int = 3
    retry_frequency: int = 300
    max_start: int = 3
    start_frequency: int = 60
    max_requeue: int = 3
    reset_frequency: int = 3600
    on_host_failure: str = "next_and_retry"
    active_from: str | None = None
    active_until: str | None = None
    hosts: list[HostRef] = field(default_factory=list)


@dataclass
class TransferChange:
    """A status the scheduler decided for one transfer (fields left None are kept).

    `retry_at` (epoch seconds; None: no wait) is always written: every change either ends
    the transfer or puts it back in the queue with the time it may start again.
    """

    id: int
    status: str
    last_error: str | None = None
    start_count: int | None = None
    requeue_count: int | None = None
    deleted: bool = False
    finished: bool = False
    retry_at: float | None = None


@dataclass
class CatalogUpdate:
    destination: str
    transfers: list[TransferChange] = field(default_factory=list)
    destination_status: str | None = None
    on_hold: bool | None = None
    retry_now: bool = False  # clear the retry time of every waiting transfer (a restart)


@dataclass
class QueueRequest:
    """The next ready transfers of a destination, excluding the ones its scheduler runs.

    Ready is by the workflow's clock (`now`, epoch seconds), the one it sets its timers by.
    """

    destination_id: int
    now: float
    limit: int
    exclude: list[int] = field(default_factory=list)
    drop_expired: bool = False


@dataclass
class ExpiryRequest:
    destination_id: int
    now: float
    exclude: list[int] = field(default_factory=list)


@dataclass
class OperationRequest:
    transfer_id: int
    operation: str
    value: int | None = None


@dataclass
class TransmitInput:
    transfer_id: int
    host_id: int
    start_count: int


@dataclass
class TransmitOutput:
    bytes_sent: int
    md5: str
    seconds: float
    target: str
    resumed_from: int = 0


class TransmitCancelled(Exception):
    pass


@dataclass
class _Plan:
    request: SendRequest
    credentials: dict[str, str]
    resume: bool  # the destination resumes targets that exist


class DisseminationActivities:
    """Activities with the catalog, the store and the credential key they need."""

    def __init__(self, engine: Engine, store: Store, box: CredentialBox, *, threads: int = 64):
        self.engine = engine
        self.store = store
        self.box = box
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="ecpds-io")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # --- scheduler support ----------------------------------------------------------

    @activity.defn
    async def load_destination(self, name: str) -> DestinationConfig:
        return await self._run(self._load_destination, name)

    def _load_destination(self, name: str) -> DestinationConfig:
        with session_scope(self.engine) as session:
            dest = session.exec(select(Destination).where(Destination.name == name)).first()
            if dest is None:
                return DestinationConfig(name=name, exists=False)
            hosts = session.exec(
                select(Host)
                .join(DestinationHost, col(DestinationHost.host_id) == col(Host.id))
                .where(DestinationHost.destination_id == dest.id)
                .where(col(Host.active).is_(True))
                .where(Host.kind == HostKind.DISSEMINATION)
                .order_by(col(DestinationHost.position))
            ).all()
            return DestinationConfig(
                name=name,
                id=dest.id or 0,
                active=dest.active,
                on_hold=dest.on_hold,
                max_connections=dest.max_connections,
                retry_count=dest.retry_count,
                retry_frequency=dest.retry_frequency,
                max_start=dest.max_start,
                start_frequency=dest.start_frequency,
                max_requeue=dest.max_requeue,
                reset_frequency=dest.reset_frequency,
                on_host_failure=str(dest.on_host_failure),
                active_from=dest.active_from,
                active_until=dest.active_until,
                hosts=[
                    HostRef(h.id or 0, h.name, h.retry_count, h.retry_frequency, h.max_connections)
                    for h in hosts
                ],
            )

    @activity.defn
    async def record(self, update: CatalogUpdate) -> None:
        await self._run(self._record, update)

    def _record(self, update: CatalogUpdate) -> None:
        now = datetime.now(UTC)
        with session_scope(self.engine) as session:
            dest = None
            if any((update.destination_status, update.on_hold is not None, update.retry_now)):
                dest = session.exec(
                    select(Destination).where(Destination.name == update.destination)
                ).first()
            if dest is not None and update.retry_now:
                # Before the changes: a cycle that failed after the restart keeps its wait.
                queue.clear_retry_times(session, destination_id=dest.id or 0)
            for change in update.transfers:
                transfer = session.get(DataTransfer, change.id)
                if transfer is None:
                    continue
                transfer.status = TransferStatus(change.status)
                if change.last_error is not None:
                    transfer.last_error = change.last_error
                if change.start_count is not None:
                    transfer.start_count = change.start_count
                if change.requeue_count is not None:
                    transfer.requeue_count = change.requeue_count
                if change.deleted:
                    transfer.deleted = True
                if change.finished:
                    transfer.finished = now
                transfer.retry_at = _when(change.retry_at)
                session.add(transfer)
            if dest is not None:
                if update.destination_status is not None:
                    dest.status = update.destination_status  # type: ignore[assignment]
                if update.on_hold is not None:
                    dest.on_hold = update.on_hold
                session.add(dest)

    @activity.defn
    async def apply_operation(self, request: OperationRequest) -> None:
        """Write an operator's change of a transfer that is not running to the catalog."""
        await self._run(self._apply_operation, request)

    def _apply_operation(self, request: OperationRequest) -> None:
        now = datetime.now(UTC)
        op = Operation(request.operation)
        with session_scope(self.engine) as session:
            transfer = session.get(DataTransfer, request.transfer_id)
            if transfer is None or transfer.deleted:
                return
            if op is Operation.REQUEUE:
                transfer.status = TransferStatus.WAIT
                transfer.queued = now
                transfer.start_count = 0
                transfer.retry_at = None
                transfer.last_error = None
                transfer.finished = None
            elif op is Operation.SCHEDULE_NOW:
                transfer.scheduled = now
                transfer.retry_at = None
                if transfer.status is TransferStatus.SCHE:
                    transfer.status = TransferStatus.WAIT
            elif op is Operation.PRIORITY:
                transfer.priority = int(request.value or 0)
            elif op is Operation.EXTEND:
                transfer.expires = transfer.expires + timedelta(seconds=request.value or 0)
            else:
                return
            session.add(transfer)

    @activity.defn
    async def next_transfers(self, request: QueueRequest) -> QueueWindow:
        """The next ready transfers of a destination's queue, and when more become ready."""
        return await self._run(self._next_transfers, request)

    def _next_transfers(self, request: QueueRequest) -> QueueWindow:
        with session_scope(self.engine) as session:
            return queue.next_transfers(
                session,
                destination_id=request.destination_id,
                now=datetime.fromtimestamp(request.now, UTC),
                limit=request.limit,
                exclude=request.exclude,
                drop_expired=request.drop_expired,
            )

    @activity.defn
    async def clean_expired(self, request: ExpiryRequest) -> None:
        """Stop the expired transfers waiting in a destination's queue."""
        await self._run(self._clean_expired, request)

    def _clean_expired(self, request: ExpiryRequest) -> None:
        with session_scope(self.engine) as session:
            queue.clean_expired(
                session,
                destination_id=request.destination_id,
                now=datetime.fromtimestamp(request.now, UTC),
                exclude=request.exclude,
            )

    # --- transmit ---------------------------------------------------------------------

    @activity.defn
    async def transmit(self, request: TransmitInput) -> TransmitOutput:
        """Send one transfer's file to one host, heartbeating bytes sent; resumes on retry."""
        info = activity.info()
        plan = await self._run(self._prepare, request)
        resume = info.attempt > 1 or bool(info.heartbeat_details)
        offset = 0
        if resume or plan.resume:
            try:
                offset = await self._run(partial_offset, plan.request, plan.credentials)
            except ProtocolError:
                offset = 0
        if offset:
            plan.request = dataclasses.replace(plan.request, resume_offset=offset)
        sent = offset
        cancelled = threading.Event()

        def progress(count: int) -> None:
            nonlocal sent
            sent = count
            if cancelled.is_set():
                raise TransmitCancelled("interrupted by an operator")

        started = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(
            self.executor,
            lambda: send(self.store, plan.request, plan.credentials, progress=progress),
        )
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=HEARTBEAT_EVERY)
                if done:
                    break
                if not info.is_local:
                    activity.heartbeat(sent)
            result = future.result()
        except asyncio.CancelledError:
            cancelled.set()
            await asyncio.wait({future})
            future.exception()  # TransmitCancelled, or whatever ended the send meanwhile
            raise
        except ProtocolError as exc:
            await self._run(self._failed, request, str(exc))
            raise ApplicationError(
                str(exc), type="ProtocolError", non_retryable=not exc.retryable
            ) from None
        except (StoreError, OSError, ValueError) as exc:
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            await self._run(self._failed, request, message)
            raise ApplicationError(message, type=type(exc).__name__) from None
        # send() has checked the size at the far end against the bytes delivered.
        seconds = time.monotonic() - started
        await self._run(self._done, request, result, offset, seconds)
        return TransmitOutput(
            bytes_sent=result.bytes_sent,
            md5=result.md5 or "",
            seconds=seconds,
            target=result.target,
            resumed_from=offset,
        )

    def _prepare(self, request: TransmitInput) -> _Plan:
        now = datetime.now(UTC)
        with session_scope(self.engine) as session:
            transfer, data_file, dest, host = _load(session, request)
            try:
                credentials = self.box.open(host.credentials_encrypted)
            except CredentialError as exc:
                raise ApplicationError(f"host {host.name}: {exc}", non_retryable=True) from None
            try:
                target = target_path(
                    dest.target_template,
                    destination=dest.name,
                    target=transfer.target,
                    data_file_id=data_file.id,
                    transfer_id=request.transfer_id,
                    when=now,
                )
            except NamingError as exc:
                raise ApplicationError(str(exc), non_retryable=True) from None
            transfer.status = TransferStatus.EXEC
            transfer.host_id = host.id
            transfer.started = now
            transfer.start_count = request.start_count
            transfer.bytes_sent = 0
            transfer.last_error = None
            session.add(transfer)
            send_request = SendRequest(
                data_file_id=data_file.id,
                size=data_file.size,
                adler32=data_file.adler32,
                md5=data_file.md5,
                host_name=host.name,
                host_url=host.url,
                host_options=dict(host.options or {}),
                target=target,
                compression=dest.compression,
            )
            return _Plan(send_request, credentials, dest.if_target_exists == "resume")

    def _failed(self, request: TransmitInput, message: str) -> None:
        with session_scope(self.engine) as session:
            transfer = session.get(DataTransfer, request.transfer_id)
            if transfer is not None:
                transfer.status = TransferStatus.RETR
                transfer.last_error = message
                session.add(transfer)

    def _done(
        self, request: TransmitInput, result: SendResult, offset: int, seconds: float
    ) -> None:
        with session_scope(self.engine) as session:
            transfer = session.get(DataTransfer, request.transfer_id)
            if transfer is not None:
                transfer.status = TransferStatus.DONE
                transfer.finished = datetime.now(UTC)
                transfer.bytes_sent = offset + result.bytes_sent
                transfer.size_sent = result.remote_size
                transfer.rate = result.bytes_sent / seconds if seconds > 0 else None
                transfer.last_error = None
                session.add(transfer)


def _when(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _load(
    session: Session, request: TransmitInput
) -> tuple[DataTransfer, DataFile, Destination, Host]:
    transfer = session.get(DataTransfer, request.transfer_id)
    if transfer is None or transfer.deleted:
        raise ApplicationError(f"transfer {request.transfer_id} is gone", non_retryable=True)
    data_file = session.get(DataFile, transfer.data_file_id)
    dest = session.get(Destination, transfer.destination_id)
    host = session.get(Host, request.host_id)
    if data_file is None or data_file.deleted or dest is None or host is None:
        raise ApplicationError(
            f"transfer {request.transfer_id}: its data file, destination or host is gone",
            non_retryable=True,
        )
    return transfer, data_file, dest, host
