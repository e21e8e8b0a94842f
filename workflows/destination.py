"""DestinationWorkflow: the scheduler of one destination (`destination-<name>`).

It owns the queue: orders transfers by (priority, queue time, id), starts at most
`max_connections` TransferWorkflows at once inside the active window, keeps the fail-over
state (host to start on, failed cycles, time on a backup host) and runs operations.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import TypedSearchAttributes
from temporalio.exceptions import ChildWorkflowError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from ecpds.activities.dissemination import (
        CatalogUpdate,
        DestinationConfig,
        DisseminationActivities,
        OperationRequest,
        TransferChange,
    )
    from ecpds.core.dispatch import Command, Enqueue, Operation, QueuedTransfer
    from ecpds.core.dispatch import transfer_workflow_id as child_id
    from ecpds.workflows.transfer import (
        DATA_FILE_ID,
        DESTINATION,
        PRIORITY,
        TRANSFER_STATUS,
        TransferInput,
        TransferWorkflow,
        task_priority,
    )

CONFIG_TTL = 30.0  # seconds before the destination's settings are read again
MAX_HISTORY = 10_000  # events before the scheduler drains and continues as new
LOCAL = timedelta(seconds=30)


@dataclass
class DestinationState:
    """What survives continue-as-new."""

    queue: list[QueuedTransfer] = field(default_factory=list)
    failed_cycles: int = 0
    host_index: int = 0
    backup_since: float | None = None
    held: str | None = None  # "operator" or "failures"


@dataclass
class DestinationInput:
    destination: str
    state: DestinationState | None = None


@dataclass
class DestinationView:
    """The scheduler's state, for queries."""

    status: str
    queued: list[int]
    running: list[int]
    failed_cycles: int
    host_index: int
    held: str | None


@dataclass
class _Running:
    entry: QueuedTransfer
    task: asyncio.Task[None] | None = None
    cancel_as: str | None = None  # the operation that cancelled it


def window_state(now: datetime, start: str | None, end: str | None) -> tuple[bool, float]:
    """(inside the daily UTC window, seconds until it opens)."""
    if not start or not end:
        return True, 0.0
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    opens = day + timedelta(hours=int(start[:2]), minutes=int(start[3:]))
    closes = day + timedelta(hours=int(end[:2]), minutes=int(end[3:]))
    spans_midnight = closes <= opens
    inside = (now >= opens or now < closes) if spans_midnight else opens <= now < closes
    if inside:
        return True, 0.0
    if opens <= now:
        opens += timedelta(days=1)
    return False, (opens - now).total_seconds()


@workflow.defn
class DestinationWorkflow:
    def __init__(self) -> None:
        self.name = ""
        self.queue: dict[int, QueuedTransfer] = {}
        self.running: dict[int, _Running] = {}
        self.commands: list[Command] = []
        self.changes: list[TransferChange] = []
        self.config = DestinationConfig(name="")
        self.loaded_at = float("-inf")
        self.state = DestinationState()
        self.written_status: str | None = None
        self.written_hold: bool | None = None
        self.wake = False

    # --- messages ---------------------------------------------------------------------

    @workflow.signal
    def enqueue(self, batch: Enqueue) -> None:
        for entry in batch.transfers:
            if entry.id not in self.running and entry.id not in self.queue:
                self.queue[entry.id] = entry
        self.wake = True

    @workflow.signal
    def command(self, command: Command) -> None:
        self.commands.append(command)
        self.wake = True

    @workflow.query
    def view(self) -> DestinationView:
        return DestinationView(
            status=self._status(),
            queued=[e.id for e in sorted(self.queue.values(), key=lambda e: e.order)],
            running=sorted(self.running),
            failed_cycles=self.state.failed_cycles,
            host_index=self.state.host_index,
            held=self.state.held,
        )

    # --- main loop --------------------------------------------------------------------

    @workflow.run
    async def run(self, request: DestinationInput) -> None:
        self.name = request.destination
        if request.state is not None:
            self.state = request.state
            for entry in request.state.queue:
                self.queue.setdefault(entry.id, entry)
        await self._load_config()
        if self.config.on_hold and self.state.held is None:
            self.state.held = "operator"
        while True:
            # Cleared before the work, so a signal or a finished transfer during it loops again.
            self.wake = False
            if self._now() - self.loaded_at >= CONFIG_TTL and (self.queue or self.commands):
                await self._load_config()
            while self.commands:
                await self._run_command(self.commands.pop(0))
            draining = (
                workflow.info().get_current_history_length() > MAX_HISTORY
                or workflow.info().is_continue_as_new_suggested()
            )
            if not draining:
                self._start_ready()
            await self._flush()
            if draining and not self.running and not self.commands and not self.changes:
                await workflow.wait_condition(workflow.all_handlers_finished)
                self.state.queue = list(self.queue.values())
                workflow.continue_as_new(DestinationInput(self.name, self.state))
            timeout = self._next_wake()
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self.wake, timeout=None if timeout is None else max(timeout, 0.001)
                )

    def _now(self) -> float:
        return workflow.now().timestamp()

    async def _load_config(self) -> None:
        self.config = await workflow.execute_local_activity_method(
            DisseminationActivities.load_destination, self.name, start_to_close_timeout=LOCAL
        )
        self.loaded_at = self._now()

    def _status(self) -> str:
        if not self.config.exists or not self.config.hosts:
            return "NoHosts"
        if self.state.held == "failures":
            return "Failed"
        if self.state.held or not self.config.active:
            return "Stopped"
        if self.running:
            return "Running"
        if self.state.failed_cycles:
            return "Retrying"
        return "Waiting" if self.queue else "Idle"

    async def _flush(self) -> None:
        """Write the statuses decided since the last flush in one local activity."""
        status = self._status()
        hold = self.state.held is not None
        if not self.changes and status == self.written_status and hold == self.written_hold:
            return
        changes, self.changes = self.changes, []
        await workflow.execute_local_activity_method(
            DisseminationActivities.record,
            CatalogUpdate(
                self.name,
                changes,
                destination_status=status if status != self.written_status else None,
                on_hold=hold if hold != self.written_hold else None,
            ),
            start_to_close_timeout=LOCAL,
        )
        self.written_status, self.written_hold = status, hold

    def _next_wake(self) -> float | None:
        """Seconds until something may start without a signal; None when only a signal can."""
        config = self.config
        if not self.queue or self.state.held is not None or not config.active or not config.hosts:
            return None
        if len(self.running) >= config.max_connections:
            return None
        inside, opens_in = window_state(workflow.now(), config.active_from, config.active_until)
        if not inside:
            return opens_in
        return min(max(e.scheduled, e.not_before) for e in self.queue.values()) - self._now()

    # --- scheduling -------------------------------------------------------------------

    def _start_ready(self) -> None:
        config = self.config
        if self.state.held or not config.exists or not config.active or not config.hosts:
            return
        now = self._now()
        if not window_state(workflow.now(), config.active_from, config.active_until)[0]:
            return
        if (
            self.state.backup_since is not None
            and now - self.state.backup_since >= config.reset_frequency
        ):
            self.state.host_index, self.state.backup_since = 0, None
        free = config.max_connections - len(self.running)
        ready = sorted(
            (e for e in self.queue.values() if max(e.scheduled, e.not_before) <= now),
            key=lambda e: e.order,
        )
        for entry in ready:
            if entry.expires <= now:
                del self.queue[entry.id]
                self.changes.append(
                    TransferChange(
                        entry.id, "STOP", last_error="expired before it was sent", finished=True
                    )
                )
                continue
            if free <= 0:
                break
            free -= 1
            del self.queue[entry.id]
            entry.start_count += 1
            running = _Running(entry)
            self.running[entry.id] = running
            running.task = asyncio.create_task(self._run_transfer(running))

    async def _run_transfer(self, running: _Running) -> None:
        entry = running.entry
        hosts = self.config.hosts
        first = self.state.host_index % len(hosts)
        try:
            result = await workflow.execute_child_workflow(
                TransferWorkflow.run,
                TransferInput(
                    transfer_id=entry.id,
                    destination=self.name,
                    priority=entry.priority,
                    start_count=entry.start_count,
                    hosts=hosts,
                    first_host=first,
                    size=entry.size,
                ),
                id=child_id(self.name, entry.id),
                parent_close_policy=ParentClosePolicy.ABANDON,
                priority=task_priority(entry.priority, self.name),
                search_attributes=TypedSearchAttributes(
                    [
                        DESTINATION.value_set(self.name),
                        DATA_FILE_ID.value_set(entry.data_file_id),
                        TRANSFER_STATUS.value_set("EXEC"),
                        PRIORITY.value_set(entry.priority),
                    ]
                ),
            )
        except (ChildWorkflowError, asyncio.CancelledError) as exc:
            del self.running[entry.id]
            if running.cancel_as is not None:
                await self._cancelled(running)
            else:
                self._cycle_failed(entry, f"transfer workflow failed: {getattr(exc, 'cause', exc)}")
            self.wake = True
            return
        except WorkflowAlreadyStartedError:
            # Started by an earlier run of this scheduler: it records its own outcome.
            del self.running[entry.id]
            self.wake = True
            return
        del self.running[entry.id]
        if result.done:
            self.state.failed_cycles = 0
            if result.host_index == 0:
                self.state.host_index, self.state.backup_since = 0, None
            elif (
                self.config.on_host_failure == "next_and_stay"
                and self.state.host_index != result.host_index
            ):
                self.state.host_index = result.host_index
                self.state.backup_since = self._now()
        else:
            self._cycle_failed(entry, result.error or "failed on every host")
        self.wake = True

    def _cycle_failed(self, entry: QueuedTransfer, error: str) -> None:
        """A full cycle over the hosts failed: wait, re-queue for later, hold or fail."""
        config, now = self.config, self._now()
        self.state.failed_cycles += 1
        if self.state.failed_cycles > config.retry_count:
            self.state.held = "failures"
            entry.not_before = 0.0
            self.queue[entry.id] = entry
            self.changes.append(
                TransferChange(entry.id, "WAIT", last_error=error, start_count=entry.start_count)
            )
        elif entry.start_count >= config.max_start:
            entry.requeue_count += 1
            if entry.requeue_count > config.max_requeue:
                self.changes.append(
                    TransferChange(
                        entry.id,
                        "FAIL",
                        last_error=error,
                        requeue_count=entry.requeue_count,
                        finished=True,
                    )
                )
                return
            entry.start_count = 0
            entry.not_before = now + config.start_frequency
            self.queue[entry.id] = entry
            self.changes.append(
                TransferChange(
                    entry.id,
                    "RETR",
                    last_error=error,
                    start_count=0,
                    requeue_count=entry.requeue_count,
                )
            )
        else:
            entry.not_before = now + config.retry_frequency
            self.queue[entry.id] = entry
            self.changes.append(
                TransferChange(entry.id, "WAIT", last_error=error, start_count=entry.start_count)
            )

    # --- operations -------------------------------------------------------------------

    async def _run_command(self, command: Command) -> None:
        op = Operation(command.operation)
        if op is Operation.HOLD:
            self.state.held = "operator"
        elif op is Operation.RESTART:
            self.state.held = None
            self.state.failed_cycles = 0
            self.state.host_index, self.state.backup_since = 0, None
            for entry in self.queue.values():
                entry.not_before = 0.0
            if command.immediate:
                for running in self.running.values():
                    self._cancel(running, "restart")
            await self._load_config()
        elif op is Operation.CLEAN_EXPIRED:
            now = self._now()
            for entry in [e for e in self.queue.values() if e.expires <= now]:
                del self.queue[entry.id]
                self.changes.append(
                    TransferChange(entry.id, "STOP", last_error="expired", finished=True)
                )
        elif command.transfer_id is not None:
            await self._transfer_command(op, command.transfer_id, command.value)

    async def _transfer_command(self, op: Operation, transfer_id: int, value: int | None) -> None:
        running = self.running.get(transfer_id)
        if op in (Operation.STOP, Operation.INTERRUPT, Operation.DELETE):
            if running is not None:
                self._cancel(running, op.value)
                return
            self.queue.pop(transfer_id, None)
            self.changes.append(_stopped(transfer_id, op.value))
            return
        if running is not None:
            if op is Operation.REQUEUE:
                self._cancel(running, op.value)
            return
        entry = await workflow.execute_local_activity_method(
            DisseminationActivities.apply_operation,
            OperationRequest(transfer_id, op.value, value),
            start_to_close_timeout=LOCAL,
        )
        if entry is None:
            return
        old = self.queue.get(transfer_id)
        if old is not None and op in (Operation.PRIORITY, Operation.EXTEND):
            entry.not_before, entry.start_count = old.not_before, old.start_count
        self.queue[transfer_id] = entry

    def _cancel(self, running: _Running, operation: str) -> None:
        if running.cancel_as is None and running.task is not None:
            running.cancel_as = operation
            running.task.cancel()

    async def _cancelled(self, running: _Running) -> None:
        """A running transfer an operator cancelled: stop it, or put it back in the queue."""
        entry, operation = running.entry, running.cancel_as
        if operation == Operation.REQUEUE.value:
            requeued = await workflow.execute_local_activity_method(
                DisseminationActivities.apply_operation,
                OperationRequest(entry.id, operation),
                start_to_close_timeout=LOCAL,
            )
            if requeued is not None:
                self.queue[entry.id] = requeued
        elif operation == "restart":
            entry.not_before = 0.0
            self.queue[entry.id] = entry
            self.changes.append(
                TransferChange(entry.id, "WAIT", last_error="interrupted by an immediate restart")
            )
        else:
            self.changes.append(_stopped(entry.id, operation or Operation.STOP.value))


def _stopped(transfer_id: int, operation: str) -> TransferChange:
    if operation == Operation.INTERRUPT.value:
        return TransferChange(transfer_id, "INTR", last_error="interrupted by an operator")
    return TransferChange(
        transfer_id,
        "STOP",
        last_error="deleted by an operator" if operation == "delete" else "stopped by an operator",
        deleted=operation == Operation.DELETE.value,
        finished=True,
    )
