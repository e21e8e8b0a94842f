"""Keep the one NotificationWorkflow of the task queue running (the outbox's publisher)."""

from __future__ import annotations

import contextlib

from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError

from ecpds.core.engine import notification_workflow_id
from ecpds.workflows.notification import NotificationWorkflow


async def ensure_notifications(client: Client, task_queue: str) -> str:
    """Start the publisher unless it runs already; its workflow id."""
    workflow_id = notification_workflow_id(task_queue)
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(NotificationWorkflow.run, id=workflow_id, task_queue=task_queue)
    return workflow_id
