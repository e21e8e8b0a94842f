"""TransferWorkflow: one transfer sent through its destination's hosts, one fail-over cycle.

Started by the destination's scheduler with the host to begin with; each host is tried
by its own retry count and frequency before the next one. The history is the transfer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from ecpds.activities.scheduling import HostRef
    from ecpds.activities.transmit import TransmitActivities, TransmitInput, TransmitOutput
    from ecpds.core.engine import TRANSFER_STATUS, TRANSFER_WORKFLOW

# Files up to this size go in a local activity: no task-queue round trip, no heartbeats
# needed. The workflow's own tasks still carry the transfer's priority.
LOCAL_SEND_LIMIT = 1 << 20


def task_priority(priority: int, destination: str) -> Priority:
    """Temporal priority keys 1-5 from transfer priorities 0-99; fair between destinations."""
    return Priority(priority_key=1 + min(max(priority, 0), 99) // 20, fairness_key=destination[:64])


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
    @workflow.run
    async def run(self, request: TransferInput) -> TransferOutput:
        count = len(request.hosts)
        error = "the destination has no active dissemination host"
        index = request.first_host
        for step in range(count):
            index = (request.first_host + step) % count
            host = request.hosts[index]
            try:
                sent = await self._transmit(request, host)
            except ActivityError as exc:
                if isinstance(exc.cause, CancelledError):
                    raise  # an operator interrupted the transfer: the workflow is cancelled
                error = f"host {host.name}: {exc.cause or exc}"
                continue
            except ApplicationError as exc:  # local activities fail without the wrapper
                error = f"host {host.name}: {exc}"
                continue
            workflow.upsert_search_attributes([TRANSFER_STATUS.value_set("DONE")])
            return TransferOutput(True, index, md5=sent.md5, bytes_sent=sent.bytes_sent)
        workflow.upsert_search_attributes([TRANSFER_STATUS.value_set("RETR")])
        return TransferOutput(False, index, error)

    async def _transmit(self, request: TransferInput, host: HostRef) -> TransmitOutput:
        """One host, tried by its retry count and frequency."""
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
                start_to_close_timeout=timedelta(minutes=5),
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
