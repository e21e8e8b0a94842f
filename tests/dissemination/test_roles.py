"""Worker roles on their own task queues: a worker polls only its roles' queues, and a
publisher left on the bare queue by a version with one queue moves to the auxiliary one."""

from __future__ import annotations

import asyncio

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus

from ecpds.core.engine import NOTIFICATION_WORKFLOW, notification_workflow_id, workflow_queue
from ecpds.core.roles import Role, role_queue
from ecpds.workers.notifier import ensure_notifications
from ecpds.workers.worker import build_worker
from ecpds.workflows.notification import NotificationWorkflow

from .conftest import Dissemination

POLLERS_WAIT = 30.0


async def polled(client: Client, queue: str) -> bool:
    """Whether a worker polls `queue` for workflow tasks (as the server saw lately)."""
    answer = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return bool(answer.pollers)


async def test_a_worker_polls_only_its_roles_queues(
    dissemination_without_worker: Dissemination,
) -> None:
    env = dissemination_without_worker
    base = env.settings.task_queue
    queues = {role: role_queue(base, role) for role in Role}
    assert len(set(queues.values())) == 3 and queues[Role.DISSEMINATION] == base
    roles = [Role.DISSEMINATION, Role.AUXILIARY]
    async with build_worker(env.client, env.settings, roles=roles) as worker:
        assert worker.task_queues == [queues[Role.DISSEMINATION], queues[Role.AUXILIARY]]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + POLLERS_WAIT
        while not all([await polled(env.client, queues[role]) for role in roles]):
            assert loop.time() < deadline, "the worker never polled its queues"
            await asyncio.sleep(0.2)
        assert not await polled(env.client, queues[Role.ACQUISITION])


async def test_the_publisher_moves_from_the_bare_queue(
    dissemination_without_worker: Dissemination,
) -> None:
    env = dissemination_without_worker
    base = env.settings.task_queue
    workflow_id = notification_workflow_id(base)
    # Where a version with one queue for every role started it (no worker polls it now).
    old = await env.client.start_workflow(NotificationWorkflow.run, id=workflow_id, task_queue=base)
    await ensure_notifications(env.client, base)
    auxiliary = workflow_queue(base, NOTIFICATION_WORKFLOW)
    assert auxiliary == role_queue(base, Role.AUXILIARY)
    moved = await env.client.get_workflow_handle(workflow_id).describe()
    assert moved.task_queue == auxiliary and moved.status == WorkflowExecutionStatus.RUNNING
    ended = await env.client.get_workflow_handle(
        workflow_id, run_id=old.first_execution_run_id
    ).describe()
    assert ended.status == WorkflowExecutionStatus.TERMINATED
    # Asked again, the publisher on its queue is left as it is.
    await ensure_notifications(env.client, base)
    again = await env.client.get_workflow_handle(workflow_id).describe()
    assert again.run_id == moved.run_id
    await env.client.get_workflow_handle(workflow_id).terminate("the test is over")
