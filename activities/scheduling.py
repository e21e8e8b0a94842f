"""Scheduler activities: a destination's settings, reads of its queue window, status writes
and operators' changes, all in the catalog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio import activity

from ecpds.core import queue
from ecpds.core.db import session_scope
from ecpds.core.engine import Operation, QueueWindow
from ecpds.core.models import (
    DataTransfer,
    Destination,
    DestinationHost,
    Host,
    HostKind,
    TransferStatus,
)

T = TypeVar("T")


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
class RecordInput:
    destination: str
    transfers: list[TransferChange] = field(default_factory=list)
    destination_status: str | None = None
    on_hold: bool | None = None
    retry_now: bool = False  # clear the retry time of every waiting transfer (a restart)


@dataclass
class NextTransfersInput:
    """The next ready transfers of a destination, excluding the ones its scheduler runs.

    Ready is by the workflow's clock (`now`, epoch seconds), the one it sets its timers by.
    """

    destination_id: int
    now: float
    limit: int
    exclude: list[int] = field(default_factory=list)
    drop_expired: bool = False


@dataclass
class CleanExpiredInput:
    destination_id: int
    now: float
    exclude: list[int] = field(default_factory=list)


@dataclass
class OperationInput:
    transfer_id: int
    operation: str
    value: int | None = None


class SchedulingActivities:
    """The local activities of the destination schedulers, on the catalog."""

    def __init__(self, engine: Engine, *, threads: int = 16) -> None:
        self.engine = engine
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="ecpds-catalog")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

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
                .where(col(Host.kind).in_([HostKind.DISSEMINATION, HostKind.BACKUP]))
                .order_by(col(DestinationHost.position))
            ).all()
            # The dissemination hosts in their order, then the backup hosts: a cycle falls
            # back on these when every dissemination host failed (or there is none).
            hosts = sorted(hosts, key=lambda h: h.kind == HostKind.BACKUP)
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
    async def record(self, update: RecordInput) -> None:
        await self._run(self._record, update)

    def _record(self, update: RecordInput) -> None:
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
    async def apply_operation(self, request: OperationInput) -> None:
        """Write an operator's change of a transfer that is not running to the catalog."""
        await self._run(self._apply_operation, request)

    def _apply_operation(self, request: OperationInput) -> None:
        now = datetime.now(UTC)
        op = Operation(request.operation)
        with session_scope(self.engine) as session:
            transfer = session.get(DataTransfer, request.transfer_id)
            if transfer is None or transfer.deleted:
                return
            if op is Operation.REQUEUE:
                # Counted as the scheduler's own requeues are: a new round of starts.
                transfer.status = TransferStatus.WAIT
                transfer.queued = now
                transfer.start_count = 0
                transfer.requeue_count += 1
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
    async def next_transfers(self, request: NextTransfersInput) -> QueueWindow:
        """The next ready transfers of a destination's queue, and when more become ready."""
        return await self._run(self._next_transfers, request)

    def _next_transfers(self, request: NextTransfersInput) -> QueueWindow:
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
    async def clean_expired(self, request: CleanExpiredInput) -> None:
        """Stop the expired transfers waiting in a destination's queue."""
        await self._run(self._clean_expired, request)

    def _clean_expired(self, request: CleanExpiredInput) -> None:
        with session_scope(self.engine) as session:
            queue.clean_expired(
                session,
                destination_id=request.destination_id,
                now=datetime.fromtimestamp(request.now, UTC),
                exclude=request.exclude,
            )


def _when(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)
