"""Keep the one NotificationWorkflow of the catalog running (the outbox's publisher)."""

from __future__ import annotations

from temporalio.client import Client

from ecpds.core.engine import NOTIFICATION_WORKFLOW, notification_workflow_id, workflow_queue
from ecpds.workers.singleton import start_singleton
from ecpds.workflows.notification import NotificationWorkflow


async def ensure_notifications(client: Client, task_queue: str) -> str:
    """Start the publisher unless it runs already; its workflow id."""
    workflow_id = notification_workflow_id(task_queue)
    await start_singleton(
        client,
        NotificationWorkflow.run,
        None,
        id=workflow_id,
        task_queue=workflow_queue(task_queue, NOTIFICATION_WORKFLOW),
    )
    return workflow_id
