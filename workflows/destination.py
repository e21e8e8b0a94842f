"""DestinationWorkflow: the scheduler of one destination (`destination-<name>`).

The catalog is its queue: it reads a window of the next ready transfers in order
(priority, queue time, id), starts at most `max_connections` TransferWorkflows at once
(and at most a host's own `max_connections` on that host) inside the active window, keeps
the fail-over state (host to start on, failed cycles, time on a backup host) and runs
operations.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import TypedSearchAttributes
from temporalio.exceptions import (
    ApplicationError,
    ChildWorkflowError,
    TemporalError,
    WorkflowAlreadyStartedError,
)
from temporalio.workflow import ChildWorkflowHandle, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from ecpds.activities.scheduling import (
        CleanExpiredInput,
        DestinationConfig,
        NextTransfersInput,
        OperationInput,
        RecordInput,
        SchedulingActivities,
        TransferChange,
    )
    from ecpds.core.engine import (
        COMMAND_SIGNAL,
        DATA_FILE_ID,
        DESTINATION,
        DESTINATION_WORKFLOW,
        EXPIRED,
        PRIORITY,
        TRANSFER_STATUS,
        WAKE_SIGNAL,
        Command,
        DestinationInput,
        DestinationState,
        Operation,
        QueuedTransfer,
        Wake,
    )
    from ecpds.core.engine import transfer_workflow_id as child_id
    from ecpds.workflows.transfer import (
        OUTCOME_SIGNAL,
        PRIORITY_SIGNAL,
        TRANSFER_FAILED,
        TransferInput,
        TransferOutput,
        TransferWorkflow,
        task_priority,
    )

CONFIG_TTL = 30.0  # seconds before the destination's settings are read again
WINDOW_TTL = 30.0  # seconds before the window is read again (a file deleted meanwhile)
MAX_HISTORY = 10_000  # events before the scheduler drains and continues as new
WINDOW = 100  # ready transfers read from the catalog at once (at least 2 x max_connections)
MAX_WINDOW = 1_000  # ... and at most this many: the read is a marker in the history
LOCAL = timedelta(seconds=30)
# Patch ids: histories written before them replay as they ran.
STATUS_PATCH = "transfer-status-signals"  # tell a cancelled or re-prioritised transfer


@dataclass
class DestinationView:
    """The scheduler's state, for queries.

    `queued` is the window: the next ready transfers in start order (at most the window's
    size); `waiting` counts every transfer waiting in the catalog, ready or not, up to
    10,000, as of the scheduler's last read.
    """

    status: str
    queued: list[int]
    running: list[int]
    failed_cycles: int
    host_index: int
    held: str | None
    waiting: int = 0


@dataclass
class _Running:
    entry: QueuedTransfer
    host_index: int  # the host it started on
    host_id: int
    failed_status: str = "WAIT"  # what a failed cycle leaves in the catalog (told the child)
    task: asyncio.Task[None] | None = None
    handle: ChildWorkflowHandle[TransferWorkflow, TransferOutput] | None = None
    cancel_as: str | None = None  # the operation that cancelled it


def failed_status(start_count: int, requeue_count: int, config: DestinationConfig) -> str:
    """The catalog status a transfer gets when its cycle number `start_count` fails.

    WAIT: back in the queue after the destination's retry frequency; RETR: `max_start`
    failed starts, re-queued after the start frequency; FAIL: past `max_requeue` re-queues.
    """
    if start_count < config.max_start:
        return "WAIT"
    return "FAIL" if requeue_count + 1 > config.max_requeue else "RETR"


def cancelled_status(operation: str | None) -> str:
    """The catalog status an operation leaves on the running transfer it cancels."""
    if operation == Operation.INTERRUPT.value:
        return "INTR"
    if operation in (Operation.REQUEUE.value, "restart"):
        return "WAIT"
    return "STOP"


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


@workflow.defn(name=DESTINATION_WORKFLOW)
class DestinationWorkflow:
    def __init__(self) -> None:
        self.name = ""
        self.running: dict[int, _Running] = {}
        self.commands: list[Command] = []
        self.changes: list[TransferChange] = []
        self.config = DestinationConfig(name="")
        self.loaded_at = float("-inf")
        self.state = DestinationState()
        self.written_status: str | None = None
        self.written_hold: bool | None = None
        self.wake = False
        # The window: the next ready transfers, as the catalog gave them.
        self.window: deque[QueuedTransfer] = deque()
        self.complete = False  # the window held every ready transfer when it was read
        self.waiting = 0
        self.next_ready: float | None = None
        self.read_at = float("-inf")
        self.stale = True  # the catalog may have changed in a way the window does not show
        self.reading = False
        self.retry_now = False
        # Transfers whose workflow an earlier run started and still runs: left alone a while.
        self.elsewhere: dict[int, float] = {}
        self.signals: set[asyncio.Task[None]] = set()  # to running transfer workflows

    # --- messages ---------------------------------------------------------------------

    @workflow.signal(name=WAKE_SIGNAL)
    def wake_up(self, wake: Wake) -> None:
        """New work in the catalog: read the window again only if it may change it."""
        if self.reading:
            self.stale = True  # the read under way may have missed it
        elif wake.ready_at > self._now():
            self.next_ready = min(self.next_ready or wake.ready_at, wake.ready_at)
        elif self.complete or not self.window or wake.order < self.window[-1].order:
            self.stale = True
        self.wake = True

    @workflow.signal(name=COMMAND_SIGNAL)
    def command(self, command: Command) -> None:
        self.commands.append(command)
        self.wake = True

    @workflow.query
    def view(self) -> DestinationView:
        return DestinationView(
            status=self._status(),
            queued=[e.id for e in self.window],
            running=sorted(self.running),
            failed_cycles=self.state.failed_cycles,
            host_index=self.state.host_index,
            held=self.state.held,
            waiting=self.waiting,
        )

    # --- main loop --------------------------------------------------------------------

    @workflow.run
    async def run(self, request: DestinationInput) -> None:
        self.name = request.destination
        if request.state is not None:
            self.state = request.state
        await self._load_config()
        if self.config.on_hold and self.state.held is None:
            self.state.held = "operator"
        while True:
            # Cleared before the work, so a signal or a finished transfer during it loops again.
            self.wake = False
            if self._now() - self.loaded_at >= CONFIG_TTL and (self.waiting or self.commands):
                await self._load_config()
            while self.commands:
                await self._run_command(self.commands.pop(0))
            draining = (
                workflow.info().get_current_history_length() > MAX_HISTORY
                or workflow.info().is_continue_as_new_suggested()
            )
            if not draining:
                await self._start_ready()
            await self._flush()
            if draining and not self.running and not self.commands and not self.changes:
                await workflow.wait_condition(workflow.all_handlers_finished)
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
            SchedulingActivities.load_destination, self.name, start_to_close_timeout=LOCAL
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
        return "Waiting" if self.waiting else "Idle"

    async def _flush(self) -> None:
        """Write the statuses decided since the last flush in one local activity."""
        status = self._status()
        hold = self.state.held is not None
        if (
            not self.changes
            and not self.retry_now
            and status == self.written_status
            and hold == self.written_hold
        ):
            return
        changes, self.changes = self.changes, []
        retry_now, self.retry_now = self.retry_now, False
        await workflow.execute_local_activity_method(
            SchedulingActivities.record,
            RecordInput(
                self.name,
                changes,
                destination_status=status if status != self.written_status else None,
                on_hold=hold if hold != self.written_hold else None,
                retry_now=retry_now,
            ),
            start_to_close_timeout=LOCAL,
        )
        self.written_status, self.written_hold = status, hold

    def _next_wake(self) -> float | None:
        """Seconds until something may start without a signal; None when only a signal can."""
        config = self.config
        if not self._can_start() or self._free() <= 0:
            return None
        times = [t for t in (self.next_ready, *self.elsewhere.values()) if t is not None]
        if not self.waiting and not times:
            return None
        inside, opens_in = window_state(workflow.now(), config.active_from, config.active_until)
        if not inside:
            return opens_in
        return min(times) - self._now() if times else None

    # --- the queue --------------------------------------------------------------------

    def _can_start(self) -> bool:
        config = self.config
        return self.state.held is None and config.exists and config.active and bool(config.hosts)

    def _must_read(self) -> bool:
        now = self._now()
        return (
            self.stale
            or (not self.window and not self.complete)
            or (self.next_ready is not None and now >= self.next_ready)
            or (bool(self.window) and now - self.read_at >= WINDOW_TTL)
            or any(until <= now for until in self.elsewhere.values())
        )

    async def _read(self, *, drop_expired: bool) -> None:
        """Read the window again from the catalog, after writing what is still to write."""
        # Cleared first: whatever happens during the read makes the next one necessary.
        self.stale = False
        await self._flush()
        now = self._now()
        self.elsewhere = {tid: until for tid, until in self.elsewhere.items() if until > now}
        self.reading = True
        try:
            found = await workflow.execute_local_activity_method(
                SchedulingActivities.next_transfers,
                NextTransfersInput(
                    destination_id=self.config.id,
                    now=now,
                    limit=min(max(WINDOW, 2 * self.config.max_connections), MAX_WINDOW),
                    exclude=sorted({*self.running, *self.elsewhere}),
                    drop_expired=drop_expired,
                ),
                start_to_close_timeout=LOCAL,
            )
        finally:
            self.reading = False
        self.window = deque(found.transfers)
        self.complete = found.complete
        self.waiting = found.waiting
        self.next_ready = found.next_ready
        self.read_at = now

    def _free(self) -> int:
        """Connections free on the destination and on the host a transfer would start on."""
        config = self.config
        free = config.max_connections - len(self.running)
        if config.hosts:
            host = config.hosts[self.state.host_index % len(config.hosts)]
            if host.max_connections:
                busy = sum(1 for r in self.running.values() if r.host_id == host.id)
                free = min(free, host.max_connections - busy)
        return free

    # --- scheduling -------------------------------------------------------------------

    async def _start_ready(self) -> None:
        config = self.config
        if not self._can_start():
            if self.stale:
                await self._read(drop_expired=False)  # so that the view shows the queue
            return
        if not window_state(workflow.now(), config.active_from, config.active_until)[0]:
            if self.stale:
                await self._read(drop_expired=False)
            return
        if (
            self.state.backup_since is not None
            and self._now() - self.state.backup_since >= config.reset_frequency
        ):
            self.state.host_index, self.state.backup_since = 0, None
        while self._free() > 0:
            if self._must_read():
                await self._read(drop_expired=True)
                if not self._can_start():
                    return
                continue
            if not self.window:
                return
            entry = self.window.popleft()
            self.waiting = max(self.waiting - 1, 0)
            if entry.expires <= self._now():
                self.changes.append(
                    TransferChange(entry.id, "STOP", last_error=EXPIRED, finished=True)
                )
                continue
            self._start(entry)

    def _start(self, entry: QueuedTransfer) -> None:
        entry.start_count += 1
        index = self.state.host_index % len(self.config.hosts)
        status = failed_status(entry.start_count, entry.requeue_count, self.config)
        running = _Running(entry, index, self.config.hosts[index].id, status)
        self.running[entry.id] = running
        running.task = asyncio.create_task(self._run_transfer(running))

    async def _run_transfer(self, running: _Running) -> None:
        entry = running.entry
        try:
            running.handle = await workflow.start_child_workflow(
                TransferWorkflow.run,
                TransferInput(
                    transfer_id=entry.id,
                    destination=self.name,
                    priority=entry.priority,
                    start_count=entry.start_count,
                    hosts=self.config.hosts,
                    first_host=running.host_index,
                    size=entry.size,
                    failed_status=running.failed_status,
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
            result = await running.handle
        except (ChildWorkflowError, asyncio.CancelledError) as exc:
            del self.running[entry.id]
            cause = getattr(exc, "cause", None)
            if running.cancel_as is not None:
                await self._cancelled(running)
            elif isinstance(cause, ApplicationError) and cause.type == TRANSFER_FAILED:
                # A failed cycle: the workflow failed with the one-line error (its details
                # name the last host tried; the next cycle starts where this one did).
                self._cycle_failed(entry, cause.message, running.failed_status)
            else:
                self._cycle_failed(entry, f"transfer workflow failed: {cause or exc}")
            self.wake = True
            return
        except WorkflowAlreadyStartedError:
            # Started by an earlier run of this scheduler: it records its own outcome.
            del self.running[entry.id]
            self.elsewhere[entry.id] = self._now() + WINDOW_TTL
            self.wake = True
            return
        del self.running[entry.id]
        self._cycle_done(result.done, result.host_index)
        if not result.done:  # a transfer workflow started before it failed its cycles
            self._cycle_failed(entry, result.error or "failed on every host")
        self.wake = True

    def _cycle_done(self, done: bool, host_index: int) -> None:
        """The fail-over state after a cycle that ended on host `host_index`."""
        if not done:
            return
        self.state.failed_cycles = 0
        if host_index == 0:
            self.state.host_index, self.state.backup_since = 0, None
        elif self.config.on_host_failure == "next_and_stay" and self.state.host_index != host_index:
            self.state.host_index = host_index
            self.state.backup_since = self._now()

    def _cycle_failed(self, entry: QueuedTransfer, error: str, status: str | None = None) -> None:
        """A full cycle over the hosts failed: wait, re-queue for later, or fail; perhaps hold.

        `status` is what the transfer workflow was told a failure gives (its search
        attribute says it): the catalog gets the same, even if the settings changed since.
        """
        config, now = self.config, self._now()
        self.state.failed_cycles += 1
        self.stale = True  # it is back in the queue, perhaps ready at once
        status = status or failed_status(entry.start_count, entry.requeue_count, config)
        held = self.state.failed_cycles > config.retry_count
        if held:
            self.state.held = "failures"
        if status == "WAIT" and held:
            self.changes.append(
                TransferChange(entry.id, "WAIT", last_error=error, start_count=entry.start_count)
            )
        elif status in ("RETR", "FAIL"):
            requeue_count = entry.requeue_count + 1
            if status == "FAIL":
                self.changes.append(
                    TransferChange(
                        entry.id,
                        "FAIL",
                        last_error=error,
                        requeue_count=requeue_count,
                        finished=True,
                    )
                )
                return
            self.changes.append(
                TransferChange(
                    entry.id,
                    "RETR",
                    last_error=error,
                    start_count=0,
                    requeue_count=requeue_count,
                    retry_at=now + config.start_frequency,
                )
            )
        else:
            self.changes.append(
                TransferChange(
                    entry.id,
                    "WAIT",
                    last_error=error,
                    start_count=entry.start_count,
                    retry_at=now + config.retry_frequency,
                )
            )

    # --- operations -------------------------------------------------------------------

    async def _run_command(self, command: Command) -> None:
        self.stale = True
        op = Operation(command.operation)
        if op is Operation.HOLD:
            self.state.held = "operator"
        elif op is Operation.RESTART:
            self.state.held = None
            self.state.failed_cycles = 0
            self.state.host_index, self.state.backup_since = 0, None
            for change in self.changes:
                change.retry_at = None
            self.retry_now = True
            if command.immediate:
                for running in self.running.values():
                    self._cancel(running, "restart")
            await self._load_config()
        elif op is Operation.CLEAN_EXPIRED:
            await self._flush()
            await workflow.execute_local_activity_method(
                SchedulingActivities.clean_expired,
                CleanExpiredInput(self.config.id, self._now(), sorted(self.running)),
                start_to_close_timeout=LOCAL,
            )
        elif command.transfer_id is not None:
            await self._transfer_command(op, command.transfer_id, command.value)

    async def _transfer_command(self, op: Operation, transfer_id: int, value: int | None) -> None:
        running = self.running.get(transfer_id)
        if op in (Operation.STOP, Operation.INTERRUPT, Operation.DELETE):
            if running is not None:
                self._cancel(running, op.value)
                return
            self.changes.append(_stopped(transfer_id, op.value))
            return
        if running is not None:
            if op is Operation.REQUEUE:
                self._cancel(running, op.value)
                return
            if op not in (Operation.PRIORITY, Operation.EXTEND) or not workflow.patched(
                STATUS_PATCH
            ):
                return
            # Written to the catalog as for a waiting transfer; the workflow shows the priority.
            if op is Operation.PRIORITY and running.handle is not None:
                self._tell(running.handle, PRIORITY_SIGNAL, int(value or 0))
        await self._flush()  # a stop decided just before must not overwrite this change
        await workflow.execute_local_activity_method(
            SchedulingActivities.apply_operation,
            OperationInput(transfer_id, op.value, value),
            start_to_close_timeout=LOCAL,
        )

    def _cancel(self, running: _Running, operation: str) -> None:
        if running.cancel_as is None and running.task is not None:
            running.cancel_as = operation
            if running.handle is not None and workflow.patched(STATUS_PATCH):
                # Its search attribute must show what the catalog will: say it first.
                self._tell(running.handle, OUTCOME_SIGNAL, cancelled_status(operation))
            running.task.cancel()

    def _tell(self, handle: ChildWorkflowHandle[Any, Any], signal: str, arg: object) -> None:
        """Signal a running transfer workflow; one that has just closed needs no telling."""

        async def tell() -> None:
            with contextlib.suppress(TemporalError):
                await handle.signal(signal, arg)

        self.signals.add(task := asyncio.create_task(tell()))
        task.add_done_callback(self.signals.discard)

    async def _cancelled(self, running: _Running) -> None:
        """A running transfer an operator cancelled: stop it, or put it back in the queue."""
        entry, operation = running.entry, running.cancel_as
        if operation == Operation.REQUEUE.value:
            await workflow.execute_local_activity_method(
                SchedulingActivities.apply_operation,
                OperationInput(entry.id, operation),
                start_to_close_timeout=LOCAL,
            )
        elif operation == "restart":
            self.changes.append(
                TransferChange(entry.id, "WAIT", last_error="interrupted by an immediate restart")
            )
        else:
            self.changes.append(_stopped(entry.id, operation or Operation.STOP.value))
        self.stale = True


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
