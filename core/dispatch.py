"""Hand transfers to the dissemination engine: one scheduler workflow per destination.

The catalog is the queue. `TemporalDispatcher.queue` only wakes (and starts if needed)
`destination-<name>`, telling it where the best of the new work ranks; operations on
destinations and transfers travel the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from ecpds.core.db import session_scope
from ecpds.core.models import QUEUED_STATUSES, DataTransfer, Destination
from ecpds.core.store import Store

DESTINATION_WORKFLOW = "DestinationWorkflow"
REPLICATION_WORKFLOW = "ReplicationWorkflow"
DATA_FILE_ID = SearchAttributeKey.for_keyword("DataFileId")
LOOKUP_BATCH = 10_000  # transfer ids per catalog query, well under SQLite's variable limit


def destination_workflow_id(name: str) -> str:
    return f"destination-{name}"


def transfer_workflow_id(destination: str, transfer_id: int) -> str:
    """Derived from the transfer id; the destination in it keeps catalogs apart on one server."""
    return f"transfer-{destination}-{transfer_id}"


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
class Wake:
    """New work for a destination's scheduler, the same size however much was queued.

    `priority`, `queued` and `transfer_id` place the best of it in the queue's order;
    `ready_at` is the earliest time any of it may start (epoch seconds).
    """

    priority: int
    queued: float
    transfer_id: int
    ready_at: float

    @property
    def order(self) -> tuple[int, float, int]:
        return (self.priority, self.queued, self.transfer_id)

    def joined(self, other: Wake) -> Wake:
        best = min(self, other, key=lambda wake: wake.order)
        ready_at = min(self.ready_at, other.ready_at)
        return Wake(best.priority, best.queued, best.transfer_id, ready_at)


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
        """Wake the schedulers of the transfers that wait; a transfer queued twice runs once."""
        for destination, wake in self._wakes(transfer_ids).items():
            await self._signal(destination, "wake", wake)

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

    def _wakes(self, transfer_ids: Iterable[int]) -> dict[str, Wake]:
        ids = list(transfer_ids)
        wakes: dict[str, Wake] = {}
        with session_scope(self.engine) as session:
            for start in range(0, len(ids), LOOKUP_BATCH):
                rows = session.execute(
                    sa.select(
                        Destination.name,
                        DataTransfer.id,
                        DataTransfer.priority,
                        DataTransfer.queued,
                        DataTransfer.scheduled,
                        DataTransfer.retry_at,
                    )
                    .join(Destination, col(Destination.id) == col(DataTransfer.destination_id))
                    .where(col(DataTransfer.id).in_(ids[start : start + LOOKUP_BATCH]))
                    .where(col(DataTransfer.status).in_(list(QUEUED_STATUSES)))
                    .where(col(DataTransfer.deleted).is_(False))
                ).all()
                for name, tid, priority, queued, scheduled, retry_at in rows:
                    ready = max(scheduled, retry_at or scheduled)
                    wake = Wake(priority, queued.timestamp(), tid, ready.timestamp())
                    wakes[name] = wakes[name].joined(wake) if name in wakes else wake
        return wakes

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


async def stop_deleted_destination(client: Client, name: str, transfer_ids: list[int]) -> None:
    """Terminate a deleted destination's scheduler and the transfers it had running.

    Its transfers are already stopped in the catalog; a workflow that is not running is
    fine. Transfers are abandoned children of the scheduler, so each is ended by name.
    """
    ids = [destination_workflow_id(name)]
    ids += [transfer_workflow_id(name, tid) for tid in transfer_ids]
    for workflow_id in ids:
        try:
            await client.get_workflow_handle(workflow_id).terminate(
                reason=f"destination {name!r} deleted"
            )
        except RPCError as exc:
            if exc.status is not RPCStatusCode.NOT_FOUND:
                raise
