"""NotificationWorkflow: the one publisher of the notification outbox of a task queue.

It runs the long-running publish activity again and again (a fresh one every RUN_FOR,
and after a failure, with backoff, forever). If the worker holding it dies, the
heartbeat timeout hands the activity to another worker: one publisher at a time.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from ecpds.activities.notification import (
        HEARTBEAT_TIMEOUT,
        RUN_FOR,
        NotificationActivities,
    )
    from ecpds.core.engine import NOTIFICATION_WORKFLOW

RUNS_PER_WORKFLOW = 24  # then continue-as-new, to keep the history short
RUN_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,  # a catalog away for a day is waited for
)


@workflow.defn(name=NOTIFICATION_WORKFLOW)
class NotificationWorkflow:
    @workflow.run
    async def run(self) -> None:
        for _ in range(RUNS_PER_WORKFLOW):
            await workflow.execute_activity_method(
                NotificationActivities.publish_notifications,
                start_to_close_timeout=timedelta(seconds=RUN_FOR) + timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=HEARTBEAT_TIMEOUT),
                retry_policy=RUN_RETRY,
            )
        workflow.continue_as_new()
