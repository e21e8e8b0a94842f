"""The dissemination engine's names and messages: workflow types and ids, search attributes,
the scheduler's signals and their payloads, the queue window, and the inputs of the
workflows that core and the portal start.

It imports only the standard library and `temporalio.common`, so workflows, activities,
core, the portal and the dev server share it without pulling in SQL, fsspec or a client.
Each workflow belongs to one role (dissemination, acquisition, auxiliary) and runs on
that role's task queue, named from the `task_queue` setting, so each role can be deployed
and scaled on its own; its activities and child workflows run on the same queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from temporalio.common import SearchAttributeKey

from ecpds.core.roles import Role, role_queue

# --- workflow types: registered under these names, so a class may move or be renamed ---

DESTINATION_WORKFLOW = "DestinationWorkflow"
TRANSFER_WORKFLOW = "TransferWorkflow"
RETRIEVAL_BATCH_WORKFLOW = "RetrievalBatchWorkflow"
REPLICATION_WORKFLOW = "ReplicationWorkflow"
GARBAGE_COLLECTION_WORKFLOW = "GarbageCollectionWorkflow"
WAKE_SWEEP_WORKFLOW = "WakeSweepWorkflow"
DISCOVERY_WORKFLOW = "DiscoveryWorkflow"
SUBSCRIPTION_WORKFLOW = "SubscriptionWorkflow"
NOTIFICATION_WORKFLOW = "NotificationWorkflow"


# --- roles and their task queues ----------------------------------------------------------


WORKFLOW_ROLES = {
    DESTINATION_WORKFLOW: Role.DISSEMINATION,
    TRANSFER_WORKFLOW: Role.DISSEMINATION,
    DISCOVERY_WORKFLOW: Role.ACQUISITION,
    RETRIEVAL_BATCH_WORKFLOW: Role.ACQUISITION,
    SUBSCRIPTION_WORKFLOW: Role.ACQUISITION,
    REPLICATION_WORKFLOW: Role.AUXILIARY,
    GARBAGE_COLLECTION_WORKFLOW: Role.AUXILIARY,
    WAKE_SWEEP_WORKFLOW: Role.AUXILIARY,
    NOTIFICATION_WORKFLOW: Role.AUXILIARY,
}


def workflow_queue(task_queue: str, workflow_type: str) -> str:
    """The task queue a workflow of this type is started on."""
    return role_queue(task_queue, WORKFLOW_ROLES[workflow_type])


# The error type of a send that found every connection its host allows in use (by any
# destination): the transfer waits for one, it has not failed (core/host_slots.py).
HOST_BUSY = "HostBusy"
# The error type of a send its worker stopped (scale-in, `ecpds down`) after the grace
# period: handed back, sent again from where it stopped, not counted as a failed attempt.
WORKER_STOPPED = "WorkerStopped"

# The scheduler's signals; `start_workflow` takes a signal-with-start by name only.
WAKE_SIGNAL = "wake"
COMMAND_SIGNAL = "command"


# --- workflow and schedule ids ------------------------------------------------------------


def destination_workflow_id(name: str) -> str:
    return f"destination-{name}"


def transfer_workflow_id(destination: str, transfer_id: int) -> str:
    """Derived from the transfer id; the destination in it keeps catalogs apart on one server."""
    return f"transfer-{destination}-{transfer_id}"


def retrieval_batch_workflow_id(first_data_file_id: str) -> str:
    return f"retrievals-{first_data_file_id}"


def replication_workflow_id(first_data_file_id: str) -> str:
    return f"replication-{first_data_file_id}"


def acquisition_schedule_id(destination: str, host: str) -> str:
    """The Temporal Schedule of an acquisition host's discovery runs for a destination."""
    return f"acquisition-{destination}-{host}"


def discovery_workflow_id(destination: str, host: str) -> str:
    """A discovery run's id (a schedule adds the time of each run to it)."""
    return f"discovery-{destination}-{host}"


def subscription_workflow_id(destination: str, host: str) -> str:
    """One MQTT subscription per acquisition host and destination."""
    return f"subscription-{destination}-{host}"


def notification_workflow_id(task_queue: str) -> str:
    """The one publisher of the outbox per task queue (catalog)."""
    return f"notifications-{task_queue}"


def gc_schedule_id(task_queue: str) -> str:
    return f"{task_queue}-garbage-collection"


def store_check_schedule_id(task_queue: str) -> str:
    return f"{task_queue}-store-check"


def wake_sweep_schedule_id(task_queue: str) -> str:
    return f"{task_queue}-wake-sweep"


# --- search attributes: what makes transfers findable in the Temporal Web UI --------------

DESTINATION = SearchAttributeKey.for_keyword("Destination")
DATA_FILE_ID = SearchAttributeKey.for_keyword("DataFileId")
TRANSFER_STATUS = SearchAttributeKey.for_keyword("TransferStatus")
PRIORITY = SearchAttributeKey.for_int("Priority")
SEARCH_ATTRIBUTES = (DESTINATION, DATA_FILE_ID, TRANSFER_STATUS, PRIORITY)


# --- the scheduler's signals --------------------------------------------------------------


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


# --- the queue window: what a scheduler reads of its destination's queue ------------------

EXPIRED = "expired before it was sent"  # the error of a transfer that expired in the queue


@dataclass
class QueuedTransfer:
    """What the scheduler needs to order and start one transfer (times in epoch seconds)."""

    id: int
    data_file_id: str
    priority: int
    queued: float
    expires: float
    start_count: int = 0
    requeue_count: int = 0
    size: int = 0  # bytes of the data file

    @property
    def order(self) -> tuple[int, float, int]:
        return (self.priority, self.queued, self.id)


@dataclass
class QueueWindow:
    """The next ready transfers of a destination, in start order, and what else waits."""

    transfers: list[QueuedTransfer]
    complete: bool  # no other transfer is ready
    waiting: int  # ready or not, counted up to a cap (core.queue.WAITING_COUNT)
    next_ready: float | None  # no waiting transfer that is not ready now becomes so earlier


# --- inputs of the workflows that core and the portal start -------------------------------


@dataclass
class DestinationState:
    """What survives continue-as-new: a few numbers, not the queue (the catalog is the queue)."""

    failed_cycles: int = 0
    host_index: int = 0
    backup_since: float | None = None
    held: str | None = None  # "operator" or "failures"


@dataclass
class DestinationInput:
    destination: str
    state: DestinationState | None = None


@dataclass
class ReplicationInput:
    data_file_ids: list[str] = field(default_factory=list)
    check: bool = False
    after: str = ""  # sweep position: the last file id done
    repaired: int = 0
    lost: int = 0


@dataclass
class SubscriptionInput:
    destination: str
    host: str


@dataclass
class RetrievalBatchInput:
    data_file_ids: list[str]
    destination: str = ""


@dataclass
class DiscoveryInput:
    """One discovery run of an acquisition host for a destination (names only, no secrets)."""

    destination: str
    host: str
