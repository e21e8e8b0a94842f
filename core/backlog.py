"""How many tasks wait on the roles' task queues: Temporal's approximate backlog, the
figure KEDA's Temporal scaler scales workers by."""

from __future__ import annotations

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from ecpds.core.roles import Role, role_queue

# Workflow tasks (a transfer's small sends run in them, as local activities) and
# activity tasks both wait for a worker.
QUEUE_TYPES = (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)


async def queue_backlog(client: Client, namespace: str, task_queue: str) -> int:
    """The tasks waiting on one task queue, workflow and activity tasks summed."""
    total = 0
    for queue_type in QUEUE_TYPES:
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=queue_type,
                report_stats=True,
            )
        )
        total += described.stats.approximate_backlog_count
    return total


async def role_backlogs(
    client: Client, namespace: str, task_queue: str, roles: list[Role]
) -> dict[Role, int]:
    """The backlog of the task queue of each of `roles`."""
    return {
        role: await queue_backlog(client, namespace, role_queue(task_queue, role)) for role in roles
    }
