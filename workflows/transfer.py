"""TransferWorkflow: one transfer sent through its destination's hosts, one fail-over cycle.

Started by the destination's scheduler with the host to begin with; each host is tried
by its own retry count and frequency before the next one. The history is the transfer's.

It closes as the transfer went: COMPLETED when delivered, FAILED (an ApplicationError
of type `TransferFailed` with the one-line error; its details are the last host's
index) when the cycle failed, CANCELED when an operator stopped, interrupted or
requeued it. Its `TransferStatus` search attribute is the status the catalog has for
the transfer: EXEC while it runs (the host's own retries included), then DONE, or the
status the scheduler gives a failed cycle (`failed_status`: WAIT, RETR or FAIL), or the
one an operation gives (the scheduler signals it before it cancels the workflow).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from ecpds.activities.scheduling import HostRef
    from ecpds.activities.transmit import TransmitActivities, TransmitInput, TransmitOutput
    from ecpds.core.engine import (
        HOST_BUSY,
        PRIORITY,
        TRANSFER_STATUS,
        TRANSFER_WORKFLOW,
        WORKER_STOPPED,
    )

# Files up to this size go in a local activity: no task-queue round trip, no heartbeats
# needed. The workflow's own tasks still carry the transfer's priority.
LOCAL_SEND_LIMIT = 1 << 20

TRANSFER_FAILED = "TransferFailed"  # the error type of a failed cycle
OUTCOME_SIGNAL = "outcome"  # the status an operator's cancellation leaves in the catalog
PRIORITY_SIGNAL = "priority"  # an operator changed the priority of the running transfer
# Patch ids: histories written before them replay as they ran.
FAILS_PATCH = "transfer-cycle-fails"  # a failed cycle fails the workflow (was: completed)
OUTCOME_WAIT = 2.0  # seconds a cancelled workflow waits for its outcome signal (sent first)
# Pauses before asking a busy host again: short at first, then every 10 s, and after about
# an hour of waiting the busy host counts as a failed attempt (the next host is tried).
BUSY_PAUSES = (0.5, 1, 2, 5) + (10,) * 360


def task_priority(priority: int, destination: str) -> Priority:
    """Temporal priority keys 1-5 from transfer priorities 0-99; fair between destinations."""
    return Priority(priority_key=1 + min(max(priority, 0), 99) // 20, fairness_key=destination[:64])


# A small file's send, per attempt. Given to the local activity as one budget for all
# its attempts (schedule-to-close), not per attempt (start-to-close): the SDK's core
# starts a start-to-close timer for each attempt of a local activity and cancels only the
# last one, so each retried attempt left a timer behind that later timed out the running
# attempt, or panicked ("receive half not dropped") once its worker had shut down.
LOCAL_SEND_ATTEMPT = timedelta(minutes=5)


def local_retries_budget(retry: RetryPolicy, attempt: timedelta) -> timedelta:
    """The time a local activity may take over all the attempts `retry` allows."""
    attempts = max(1, retry.maximum_attempts)
    pause = retry.initial_interval or timedelta(seconds=1)
    return attempt * attempts + pause * (attempts - 1)


def _error_type(exc: ActivityError | ApplicationError) -> str | None:
    """The type of the application error an activity failed with (local ones unwrapped)."""
    cause = exc.cause if isinstance(exc, ActivityError) else exc
    return cause.type if isinstance(cause, ApplicationError) else None


@dataclass
class TransferInput:
    transfer_id: int
    destination: str
    priority: int
    start_count: int
    hosts: list[HostRef] = field(default_factory=list)
    first_host: int = 0
    heartbeat_timeout: float = 15.0
    size: int = 0
    # What the catalog shows if this cycle fails, as the scheduler decided at the start
    # (from the start and requeue counts): the search attribute then says the same.
    failed_status: str = "RETR"


@dataclass
class TransferOutput:
    done: bool
    host_index: int
    error: str | None = None
    md5: str | None = None
    bytes_sent: int = 0


# Not sandboxed: thousands of these start per hour, and building a sandbox per run cost
# as much CPU as the transfer itself (about 25% of the small-transfer rate here). The
# workflow uses only workflow.* APIs and plain dataclasses, so it is deterministic as is.
@workflow.defn(name=TRANSFER_WORKFLOW, sandboxed=False)
class TransferWorkflow:
    def __init__(self) -> None:
        self.outcome: str | None = None

    @workflow.signal(name=OUTCOME_SIGNAL)
    def set_outcome(self, status: str) -> None:
        """The status the catalog gets when the scheduler cancels this run (STOP, INTR...)."""
        self.outcome = status

    @workflow.signal(name=PRIORITY_SIGNAL)
    def set_priority(self, priority: int) -> None:
        workflow.upsert_search_attributes([PRIORITY.value_set(priority)])

    @workflow.run
    async def run(self, request: TransferInput) -> TransferOutput:
        fails = workflow.patched(FAILS_PATCH)
        count = len(request.hosts)
        error = "the destination has no active dissemination host"
        index = request.first_host
        for step in range(count):
            index = (request.first_host + step) % count
            host = request.hosts[index]
            try:
                sent = await self._transmit(request, host)
            except asyncio.CancelledError:
                if fails:
                    await self._cancelled()
                raise
            except ActivityError as exc:
                if isinstance(exc.cause, CancelledError):
                    # An operator interrupted the transfer: the workflow is cancelled.
                    if fails:
                        await self._cancelled()
                    raise
                error = f"host {host.name}: {exc.cause or exc}"
                continue
            except ApplicationError as exc:  # local activities fail without the wrapper
                error = f"host {host.name}: {exc}"
                continue
            workflow.upsert_search_attributes([TRANSFER_STATUS.value_set("DONE")])
            return TransferOutput(True, index, md5=sent.md5, bytes_sent=sent.bytes_sent)
        if not fails:
            workflow.upsert_search_attributes([TRANSFER_STATUS.value_set("RETR")])
            return TransferOutput(False, index, error)
        workflow.upsert_search_attributes([TRANSFER_STATUS.value_set(request.failed_status)])
        raise ApplicationError(
            " ".join(error.split()), index, type=TRANSFER_FAILED, non_retryable=True
        )

    async def _cancelled(self) -> None:
        """Show the status the scheduler gives the cancelled transfer, once it has said it."""
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await workflow.wait_condition(lambda: self.outcome is not None, timeout=OUTCOME_WAIT)
        workflow.upsert_search_attributes([TRANSFER_STATUS.value_set(self.outcome or "STOP")])

    async def _transmit(self, request: TransferInput, host: HostRef) -> TransmitOutput:
        """One host, tried by its retry count and frequency; while every connection the
        host allows is in use (by any destination), waited for, not counted as a failure."""
        for pause in BUSY_PAUSES:
            try:
                return await self._handed_back_sent_again(request, host)
            except (ActivityError, ApplicationError) as exc:
                if _error_type(exc) != HOST_BUSY:
                    raise
            await workflow.sleep(pause)
        return await self._handed_back_sent_again(request, host)

    async def _handed_back_sent_again(
        self, request: TransferInput, host: HostRef
    ) -> TransmitOutput:
        """The attempts on one host; a send its stopping worker handed back is sent again
        (by another worker, from where it stopped), not counted as a failed attempt."""
        while True:
            try:
                return await self._attempts(request, host)
            except (ActivityError, ApplicationError) as exc:
                if _error_type(exc) != WORKER_STOPPED:
                    raise

    async def _attempts(self, request: TransferInput, host: HostRef) -> TransmitOutput:
        transmit = TransmitInput(request.transfer_id, host.id, request.start_count)
        retry = RetryPolicy(
            initial_interval=timedelta(seconds=max(1, host.retry_frequency)),
            backoff_coefficient=1.0,
            maximum_attempts=host.retry_count + 1,
        )
        if request.size <= LOCAL_SEND_LIMIT:
            return await workflow.execute_local_activity_method(
                TransmitActivities.transmit,
                transmit,
                schedule_to_close_timeout=local_retries_budget(retry, LOCAL_SEND_ATTEMPT),
                retry_policy=retry,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        return await workflow.execute_activity_method(
            TransmitActivities.transmit,
            transmit,
            start_to_close_timeout=timedelta(days=1),
            heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout),
            retry_policy=retry,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            priority=task_priority(request.priority, request.destination),
        )
