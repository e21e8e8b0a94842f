"""Hand transfers to the dissemination engine: one scheduler workflow per destination.

The catalog is the queue. `TemporalDispatcher.queue` only wakes (and starts if needed)
`destination-<name>`, telling it where the best of the new work ranks; operations on
destinations and transfers travel the same way. A wake lost while the engine was down
is made up for by `sweep`, which a worker runs when it starts and on a schedule.
Workflows are named by their registered types and typed inputs from `core.engine`: core,
and the activities that use this dispatcher, never import a workflow module (workflows
import activities).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from ecpds.core import queue, retrieval
from ecpds.core.db import session_scope
from ecpds.core.engine import (
    COMMAND_SIGNAL,
    DATA_FILE_ID,
    DESTINATION,
    DESTINATION_OPERATIONS,
    DESTINATION_WORKFLOW,
    REPLICATION_WORKFLOW,
    RETRIEVAL_BATCH_WORKFLOW,
    WAKE_SIGNAL,
    Command,
    DestinationInput,
    Operation,
    ReplicationInput,
    RetrievalBatchInput,
    Wake,
    destination_workflow_id,
    replication_workflow_id,
    retrieval_batch_workflow_id,
    transfer_workflow_id,
    workflow_queue,
)
from ecpds.core.errors import Unavailable
from ecpds.core.models import QUEUED_STATUSES, DataTransfer, Destination, utcnow
from ecpds.core.store import Store

log = logging.getLogger(__name__)

LOOKUP_BATCH = 10_000  # transfer ids per catalog query, well under SQLite's variable limit
STARTS_IN_FLIGHT = 64  # workflow starts awaited at once
SWEEP_LATER = "the next wake sweep does it"
WAKE_WITHIN = 10.0  # seconds a push waits for the engine after its catalog commit
# What the client answers while no Temporal server is there to answer.
_UNREACHABLE = frozenset(
    {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED}
)


@contextlib.asynccontextmanager
async def reaching_engine() -> AsyncIterator[None]:
    """Turn the client's errors for an engine that does not answer into `Unavailable`."""
    try:
        yield
    except RPCError as exc:
        if exc.status not in _UNREACHABLE:
            raise
        raise _unavailable(exc.message) from None
    except RuntimeError as exc:
        # What a lazily connecting client raises while it cannot connect.
        if not str(exc).startswith("Failed client connect"):
            raise
        raise _unavailable("cannot connect") from None
    except (OSError, TimeoutError):
        raise _unavailable("no answer in time") from None


def _unavailable(reason: str) -> Unavailable:
    return Unavailable(f"the workflow engine (Temporal) does not answer: {reason}")


async def best_effort(call: Awaitable[None], *, what: str, later: str) -> bool:
    """Await `call` within WAKE_WITHIN; if the engine does not answer, log one line.

    For what follows a catalog commit: the request has succeeded whatever happens here,
    and `later` says what does the work instead.
    """
    try:
        async with reaching_engine(), asyncio.timeout(WAKE_WITHIN):
            await call
    except Unavailable as exc:
        log.warning("%s: not now, %s; %s", what, exc, later)
        return False
    except Exception:
        # Not the engine being away but a bug or a misconfiguration: its traceback, and
        # still the answer the committed request deserves.
        log.exception("%s failed; %s", what, later)
        return False
    return True


@dataclass
class SweepOutput:
    destinations: int = 0  # schedulers signalled (started if they did not run)
    retrievals: int = 0  # unfetched files whose retrieval was started


class OperationError(Exception):
    """An operation that cannot apply; `status` is the matching HTTP code."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def check_transfer_operation(operation: Operation, value: int | None) -> None:
    """Refuse a transfer operation or value that can never apply, before any is sent."""
    if operation in DESTINATION_OPERATIONS:
        raise OperationError(f"{operation} is not a transfer operation", 422)
    if operation in (Operation.PRIORITY, Operation.EXTEND) and value is None:
        raise OperationError(f"{operation} needs a value", 422)
    if operation is Operation.PRIORITY and value is not None and not 0 <= value <= 99:
        raise OperationError(f"priority {value} is out of range: use 0 (urgent) to 99", 422)
    if operation is Operation.EXTEND and value is not None and value <= 0:
        raise OperationError("extend needs a positive number of seconds", 422)


class TemporalDispatcher:
    """Queues transfers and carries operations to the destination schedulers."""

    def __init__(self, client: Client, task_queue: str, engine: Engine) -> None:
        self.client = client
        self.task_queue = task_queue
        self.engine = engine

    async def _signal(self, destination: str, signal: str, arg: Wake | Command) -> None:
        """Signal the destination's scheduler, starting it if it does not run."""
        async with reaching_engine():
            await self.client.start_workflow(
                DESTINATION_WORKFLOW,
                DestinationInput(destination),
                id=destination_workflow_id(destination),
                task_queue=workflow_queue(self.task_queue, DESTINATION_WORKFLOW),
                start_signal=signal,
                start_signal_args=[arg],
            )

    async def queue(self, transfer_ids: list[int]) -> None:
        """Wake the schedulers of the transfers that wait; a transfer queued twice runs once."""
        for destination, wake in self._wakes(transfer_ids).items():
            await self._signal(destination, WAKE_SIGNAL, wake)

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
            async with reaching_engine():
                await self.client.start_workflow(
                    REPLICATION_WORKFLOW,
                    ReplicationInput(data_file_ids),
                    id=replication_workflow_id(data_file_ids[0]),
                    task_queue=workflow_queue(self.task_queue, REPLICATION_WORKFLOW),
                    search_attributes=TypedSearchAttributes(
                        [SearchAttributePair(DATA_FILE_ID, data_file_ids[0])]
                    ),
                )

    async def retrieve(self, data_file_ids: list[str], destination: str) -> None:
        """Start the retrievals of files registered by source, a batch workflow per BATCH."""
        gate = asyncio.Semaphore(STARTS_IN_FLIGHT)

        async def start(batch: list[str]) -> None:
            pairs = [SearchAttributePair(DATA_FILE_ID, batch[0])]
            if destination:
                pairs.append(SearchAttributePair(DESTINATION, destination))
            async with gate:
                with contextlib.suppress(WorkflowAlreadyStartedError):
                    async with reaching_engine():
                        await self.client.start_workflow(
                            RETRIEVAL_BATCH_WORKFLOW,
                            RetrievalBatchInput(batch, destination),
                            id=retrieval_batch_workflow_id(batch[0]),
                            task_queue=workflow_queue(self.task_queue, RETRIEVAL_BATCH_WORKFLOW),
                            search_attributes=TypedSearchAttributes(pairs),
                        )

        step = retrieval.BATCH
        await asyncio.gather(
            *(start(data_file_ids[i : i + step]) for i in range(0, len(data_file_ids), step))
        )

    async def sweep(self, *, limit: int = 10_000) -> SweepOutput:
        """Wake every destination with waiting transfers; start unfetched files' retrievals.

        What a lost signal (the engine down at a push) left undone; a scheduler that runs
        and knows its queue reads nothing more for it.
        """
        wakes, files = await asyncio.to_thread(self._sweep_work, limit)
        for destination, wake in wakes.items():
            await self._signal(destination, WAKE_SIGNAL, wake)
        started = 0
        for destination, ids in files.items():
            if await self._retrieving(destination):
                continue  # its files may be among them: the next sweep sees what is left
            await self.retrieve(ids, destination)
            started += len(ids)
        return SweepOutput(len(wakes), started)

    async def _retrieving(self, destination: str) -> bool:
        """Whether a batch of the destination's files is being fetched right now."""
        # Destination names are plain words (NAME_PATTERN): nothing to quote.
        query = (
            f"WorkflowType = '{RETRIEVAL_BATCH_WORKFLOW}' AND ExecutionStatus = 'Running'"
            f" AND {DESTINATION.name} = '{destination}'"
        )
        async with reaching_engine():
            async for _ in self.client.list_workflows(query, limit=1):
                return True
        return False

    def _sweep_work(self, limit: int) -> tuple[dict[str, Wake], dict[str, list[str]]]:
        now = utcnow()
        wakes: dict[str, Wake] = {}
        with session_scope(self.engine) as session:
            for destination_id, name in queue.waiting_destinations(session):
                wake = queue.wake_of(session, destination_id=destination_id, now=now)
                if wake is not None:
                    wakes[name] = wake
            files = retrieval.unfetched(session, limit=limit)
        return wakes, files

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
        await self._signal(name, COMMAND_SIGNAL, Command(operation.value, immediate=immediate))

    async def operate_transfer(
        self, transfer_id: int, operation: Operation, *, value: int | None = None
    ) -> None:
        check_transfer_operation(operation, value)
        if not 0 < transfer_id < 2**63:  # beyond any id the catalog gives (a 64-bit key)
            raise OperationError(f"transfer {transfer_id} does not exist", 404)
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
            destination,
            COMMAND_SIGNAL,
            Command(operation.value, transfer_id=transfer_id, value=value),
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
            async with reaching_engine():
                await client.get_workflow_handle(workflow_id).terminate(
                    reason=f"destination {name!r} deleted"
                )
        except RPCError as exc:
            if exc.status is not RPCStatusCode.NOT_FOUND:
                raise
