"""Run by test_local_retries.py in its own interpreter: a local activity retried once on a
worker that then shuts down, the interpreter kept alive past the attempt's budget."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

from ecpds.workflows.transfer import local_retries_budget

ATTEMPT = timedelta(seconds=2)


@activity.defn
async def flaky() -> int:
    if activity.info().attempt == 1:
        raise RuntimeError("first attempt fails")
    return activity.info().attempt


@workflow.defn(sandboxed=False)
class RetriedLocally:
    @workflow.run
    async def run(self, per_attempt: bool) -> int:
        retry = RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=3)
        timeouts = (
            {"start_to_close_timeout": ATTEMPT}
            if per_attempt
            else {"schedule_to_close_timeout": local_retries_budget(retry, ATTEMPT)}
        )
        return await workflow.execute_local_activity(flaky, retry_policy=retry, **timeouts)


async def main(address: str, per_attempt: bool) -> None:
    client = await Client.connect(address)
    queue = f"local-retry-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[RetriedLocally], activities=[flaky]):
        attempt = await client.execute_workflow(
            RetriedLocally.run, per_attempt, id=queue, task_queue=queue
        )
    print(f"done after {attempt} attempts", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] == "per-attempt"))
    time.sleep(ATTEMPT.total_seconds() * 3)  # past every timer the attempts started
