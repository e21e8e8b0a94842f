"""Start a long-running workflow that must run once, on its role's task queue.

A version that ran every workflow on one queue left its publisher and subscriptions
there, where no worker of their role polls any more: such a workflow is ended and started
again on its queue (both only ever hold what the catalog can rebuild).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

log = logging.getLogger(__name__)


async def start_singleton(
    client: Client, workflow: Any, arg: Any, *, id: str, task_queue: str, **options: Any
) -> None:
    """Start `workflow` as `id` on `task_queue` unless it runs there already."""
    args = [] if arg is None else [arg]
    for _ in range(2):
        try:
            await client.start_workflow(
                workflow, args=args, id=id, task_queue=task_queue, **options
            )
            return
        except WorkflowAlreadyStartedError:
            handle = client.get_workflow_handle(id)
            running = await handle.describe()
            if running.task_queue == task_queue:
                return
            log.info(
                "%s runs on task queue %s: moving it to %s", id, running.task_queue, task_queue
            )
            with contextlib.suppress(RPCError):  # ended meanwhile: start it all the same
                await handle.terminate(reason=f"moved to task queue {task_queue}")
