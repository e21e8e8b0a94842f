"""Hand transfers to the dissemination engine: one scheduler workflow per destination.

`TemporalDispatcher.queue` signals (and starts if needed) `destination-<name>` with the
transfers to queue; operations on destinations and transfers travel the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError

from ecpds.core.db import session_scope
from ecpds.core.models import DataFile, DataTransfer, Destination, TransferStatus
from ecpds.core.store import Store

DESTINATION_WORKFLOW = "DestinationWorkflow"
REPLICATION_WORKFLOW = "ReplicationWorkflow"
DATA_FILE_ID = SearchAttributeKey.for_keyword("DataFileId")
SIGNAL_BATCH = 1000  # transfers per signal: well under Temporal's 2 MB payload limit
QUEUEABLE = frozenset({TransferStatus.WAIT, TransferStatus.SCHE, TransferStatus.RETR})


def destination_workflow_id(name: str) -> str:
    return f"destination-{name}"


def transfer_workflow_id(destination: str, transfer_id: int) -> str:
    """Derived from the transfer id; the destination in it keeps catalogs apart on one server."""
    return f"transfer-{destination}-{transfer_id}"


@dataclass
class QueuedTransfer:
    """What the scheduler needs to order and start one transfer (times in epoch seconds)."""

    id: int
    data_file_id: str
    priority: int
    queued: float
    scheduled: float
    expires: float
    start_count: int = 0
    requeue_count: int = 0
    not_before: float = 0.0
    size: int = 0  # bytes of the data file

    @property
    def order(self) -> tuple[int, float, int]:
        return (self.priority, self.queued, self.id)

    @classmethod
    def of(cls, transfer: DataTransfer, size: int) -> QueuedTransfer:
        assert transfer.id is not None
        return cls(
            id=transfer.id,
            data_file_id=transfer.data_file_id,
            priority=transfer.priority,
            queued=transfer.queued.timestamp(),
            scheduled=transfer.scheduled.timestamp(),
            expires=transfer.expires.timestamp(),
            start_count=transfer.start_count,
            requeue_count=transfer.requeue_count,
            size=size,
        )


class Operation(StrEnum):
    """Operator actions; the first three act on a destination, the rest on one transfer."""

    HOLD = "hold"
    RESTART = "restart"
    CLEAN_EXPIRED = "clean-expired"
    REQUEUE = "requeue"
    STOP = "stop"
    INTERRUPT = "interrupt"
    SCHEDULE_NOW = "schedule-now"
    PRIORITY = "priority"
    EXTEND = "extend"
    DELETE = "delete"


DESTINATION_OPERATIONS = frozenset({Operation.HOLD, Operation.RESTART, Operation.CLEAN_EXPIRED})


@dataclass
class Command:
    """An operation for a destination's scheduler; `value` is a priority or seconds."""

    operation: str
    transfer_id: int | None = None
    value: int | None = None
    immediate: bool = False


@dataclass
class Enqueue:
    transfers: list[QueuedTransfer] = field(default_factory=list)


class OperationError(Exception):
    """An operation that cannot apply; `status` is the matching HTTP code."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class TemporalDispatcher:
    """Queues transfers and carries operations to the destination schedulers."""

    def __init__(self, client: Client, task_queue: str, engine: Engine) -> None:
        self.client = client
        self.task_queue = task_queue
        self.engine = engine

    async def _signal(self, destination: str, signal: str, arg: object) -> None:
        await self.client.start_workflow(
            DESTINATION_WORKFLOW,
            {"destination": destination},  # the workflow's DestinationInput
            id=destination_workflow_id(destination),
            task_queue=self.task_queue,
            start_signal=signal,
            start_signal_args=[arg],
        )

    async def queue(self, transfer_ids: list[int]) -> None:
        """Queue the transfers that are waiting; a transfer queued twice runs once."""
        by_destination = self._queueable(transfer_ids)
        for destination, entries in by_destination.items():
            for start in range(0, len(entries), SIGNAL_BATCH):
                batch = entries[start : start + SIGNAL_BATCH]
                await self._signal(destination, "enqueue", Enqueue(batch))

    async def stored(self, data_file_ids: list[str], store: Store) -> None:
        """Copy new objects to the replica locations and archives, if the site has either.

        Every door (REST, web, S3, FTP, SFTP) ingests through here, so each new object is
        copied at once rather than at the next store sweep.
        """
        if not data_file_ids:
            return
        if len(store.locations) < 2 and not await asyncio.to_thread(self._has_archives):
            return
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await self.client.start_workflow(
                REPLICATION_WORKFLOW,
                {"data_file_ids": data_file_ids},
                id=f"replication-{data_file_ids[0]}",
                task_queue=self.task_queue,
                search_attributes=TypedSearchAttributes(
                    [SearchAttributePair(DATA_FILE_ID, data_file_ids[0])]
                ),
            )

    def _has_archives(self) -> bool:
        with self.engine.connect() as conn:
            query = select(Destination.id).where(col(Destination.backup_url).is_not(None))
            return conn.execute(query.limit(1)).first() is not None

    def _queueable(self, transfer_ids: Iterable[int]) -> dict[str, list[QueuedTransfer]]:
        ids = list(transfer_ids)
        found: dict[str, list[QueuedTransfer]] = defaultdict(list)
        if not ids:
            return found
        with session_scope(self.engine) as session:
            rows = session.exec(
                select(DataTransfer, Destination.name, DataFile.size)
                .join(Destination, col(Destination.id) == col(DataTransfer.destination_id))
                .join(DataFile, col(DataFile.id) == col(DataTransfer.data_file_id))
                .where(col(DataTransfer.id).in_(ids))
                .where(col(DataTransfer.status).in_(list(QUEUEABLE)))
                .where(col(DataTransfer.deleted).is_(False))
            ).all()
            for transfer, name, size in rows:
                found[name].append(QueuedTransfer.of(transfer, size))
        return found

    async def operate_destination(
        self, name: str, operation: Operation, *, immediate: bool = False
    ) -> None:
        if operation not in DESTINATION_OPERATIONS:
            raise OperationError(f"{operation} is not a destination operation", 422)
        with session_scope(self.engine) as session:
            if session.exec(select(Destination.id).where(Destination.name == name)).first() is None:
                raise OperationError(f"destination {name!r} does not exist", 404)
        await self._signal(name, "command", Command(operation.value, immediate=immediate))

    async def operate_transfer(
        self, transfer_id: int, operation: Operation, *, value: int | None = None
    ) -> None:
        if operation in DESTINATION_OPERATIONS:
            raise OperationError(f"{operation} is not a transfer operation", 422)
        if operation in (Operation.PRIORITY, Operation.EXTEND) and value is None:
            raise OperationError(f"{operation} needs a value", 422)
        if operation is Operation.PRIORITY and value is not None and not 0 <= value <= 99:
            raise OperationError(f"priority {value} is out of range: use 0 (urgent) to 99", 422)
        if operation is Operation.EXTEND and value is not None and value <= 0:
            raise OperationError("extend needs a positive number of seconds", 422)
        with session_scope(self.engine) as session:
            row = session.exec(
                select(DataTransfer, Destination.name)
                .join(Destination, col(Destination.id) == col(DataTransfer.destination_id))
                .where(DataTransfer.id == transfer_id)
            ).first()
            if row is None:
                raise OperationError(f"transfer {transfer_id} does not exist", 404)
            transfer, destination = row
            if transfer.deleted:
                raise OperationError(f"transfer {transfer_id} is deleted", 409)
        await self._signal(
            destination, "command", Command(operation.value, transfer_id=transfer_id, value=value)
        )
