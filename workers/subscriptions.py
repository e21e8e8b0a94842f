"""Keep one SubscriptionWorkflow running per MQTT-triggered acquisition host and destination."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError

from ecpds.activities.subscription import mqtt_subscriptions
from ecpds.core.db import session_scope
from ecpds.core.engine import (
    DESTINATION,
    SUBSCRIPTION_WORKFLOW,
    SubscriptionInput,
    subscription_workflow_id,
    workflow_queue,
)
from ecpds.workers.singleton import start_singleton
from ecpds.workflows.subscription import SubscriptionWorkflow

log = logging.getLogger(__name__)


def _wanted(engine: Engine) -> list[tuple[str, str]]:
    with session_scope(engine) as session:
        return mqtt_subscriptions(session)


async def ensure_subscriptions(client: Client, engine: Engine, task_queue: str) -> list[str]:
    """Start the subscription of every MQTT host, cancel those whose host is gone; the ids
    of the subscriptions that run."""
    wanted = {
        subscription_workflow_id(destination, host): SubscriptionInput(destination, host)
        for destination, host in await asyncio.to_thread(_wanted, engine)
    }
    queue = workflow_queue(task_queue, SUBSCRIPTION_WORKFLOW)
    for workflow_id, request in wanted.items():
        await start_singleton(
            client,
            SubscriptionWorkflow.run,
            request,
            id=workflow_id,
            task_queue=queue,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(DESTINATION, request.destination)]
            ),
        )
    # The bare queue too: where a version with one queue for every role left them.
    query = (
        f"WorkflowType = '{SUBSCRIPTION_WORKFLOW}' AND ExecutionStatus = 'Running'"
        f" AND (TaskQueue = '{queue}' OR TaskQueue = '{task_queue}')"
    )
    async for execution in client.list_workflows(query):
        if execution.id not in wanted:
            log.info("subscription %s: its host is gone, cancelling it", execution.id)
            with contextlib.suppress(RPCError):
                await client.get_workflow_handle(execution.id).cancel()
    return sorted(wanted)
