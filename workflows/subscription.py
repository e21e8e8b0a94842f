"""SubscriptionWorkflow: the MQTT subscription of one acquisition host for one destination.

It runs the long-running subscribe activity again and again (a fresh one every session,
and after a failure, with backoff) until the host no longer subscribes. If the worker
holding the session dies, the heartbeat timeout hands the activity to another worker.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from ecpds.activities.subscription import (
        HEARTBEAT_TIMEOUT,
        SESSION,
        SubscriptionActivities,
        SubscriptionOutput,
    )
    from ecpds.core.engine import SUBSCRIPTION_WORKFLOW, SubscriptionInput

SESSIONS_PER_RUN = 100  # then continue-as-new, to keep the history short
SESSION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=0,  # a broker away for a day is waited for
)


@workflow.defn(name=SUBSCRIPTION_WORKFLOW)
class SubscriptionWorkflow:
    @workflow.run
    async def run(self, request: SubscriptionInput) -> SubscriptionOutput:
        for _ in range(SESSIONS_PER_RUN):
            output = await workflow.execute_activity_method(
                SubscriptionActivities.subscribe,
                request,
                start_to_close_timeout=timedelta(seconds=SESSION) + timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=HEARTBEAT_TIMEOUT),
                retry_policy=SESSION_RETRY,
                # Cancelled, the activity leaves its session on the broker before it ends.
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
            if output.stop:
                return output
        workflow.continue_as_new(request)
