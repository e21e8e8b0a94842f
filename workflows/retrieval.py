"""RetrievalBatchWorkflow: files registered by source (an asynchronous push, an acquisition)
fetched into the store, many per activity and many at a time, then passed on.

It returns once every file is in the store or has failed, so a parent (a discovery run)
can await it. Each fetched file's transfers go to their destinations' schedulers, and the
new objects to the replica locations and the destinations' archives. A file that fails is
retried with backoff while its error is retryable; the others do not wait for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from ecpds.activities.storage import (
        FailRetrievalsInput,
        FetchFailure,
        FetchFilesInput,
        FetchFilesOutput,
        ReplicateInput,
        StorageActivities,
    )
    from ecpds.core.engine import RETRIEVAL_BATCH_WORKFLOW, RetrievalBatchInput

FILES_PER_FETCH = 200  # files one fetch activity takes on (its heartbeat covers them all)
FETCH_ATTEMPTS = 5  # per file, for retryable errors
FIRST_BACKOFF = 2.0  # seconds before a file's second attempt, doubled each time after
MAX_BACKOFF = 60.0
# Retries of a whole fetch activity whose worker died or whose catalog was unreachable;
# files it had stored are found in the store and not fetched again.
ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=5,
)


@dataclass
class RetrievalBatchOutput:
    fetched: int = 0
    failed: int = 0
    bytes: int = 0
    errors: list[FetchFailure] = field(default_factory=list)  # the first few, one line each


@workflow.defn(name=RETRIEVAL_BATCH_WORKFLOW)
class RetrievalBatchWorkflow:
    @workflow.run
    async def run(self, batch: RetrievalBatchInput) -> RetrievalBatchOutput:
        result = RetrievalBatchOutput()
        pending = list(dict.fromkeys(batch.data_file_ids))
        failures: list[FetchFailure] = []
        backoff = FIRST_BACKOFF
        passing: list[asyncio.Task[None]] = []
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            retry: list[str] = []
            for start in range(0, len(pending), FILES_PER_FETCH):
                ids = pending[start : start + FILES_PER_FETCH]
                fetched = await self._fetch(ids, batch.destination)
                # The next files are fetched while these are queued and copied.
                passing.append(asyncio.create_task(self._pass_on(fetched)))
                result.fetched += len(fetched.fetched)
                result.bytes += fetched.bytes
                for failure in fetched.failed:
                    if failure.retryable and attempt < FETCH_ATTEMPTS:
                        retry.append(failure.data_file_id)
                    else:
                        failures.append(failure)
            if not retry:
                break
            pending = retry
            await workflow.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
        await asyncio.gather(*passing)
        if failures:
            await workflow.execute_activity_method(
                StorageActivities.fail_retrievals,
                FailRetrievalsInput(failures),
                start_to_close_timeout=timedelta(minutes=2),
            )
        result.failed = len(failures)
        result.errors = failures[:10]
        return result

    async def _fetch(self, ids: list[str], destination: str) -> FetchFilesOutput:
        """Fetch `ids`; if the activity itself gives up, each of them fails with its reason."""
        try:
            return await workflow.execute_activity_method(
                StorageActivities.fetch_files,
                FetchFilesInput(ids, destination),
                start_to_close_timeout=timedelta(hours=6),
                heartbeat_timeout=timedelta(seconds=60),
                retry_policy=ACTIVITY_RETRY,
            )
        except ActivityError as exc:
            cause = exc.cause
            reason = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
            return FetchFilesOutput(failed=[FetchFailure(i, reason) for i in ids])

    async def _pass_on(self, fetched: FetchFilesOutput) -> None:
        """Queue the released transfers; copy the new objects where copies are wanted."""
        if fetched.transfer_ids:
            await workflow.execute_activity_method(
                StorageActivities.queue_transfers,
                fetched.transfer_ids,
                start_to_close_timeout=timedelta(minutes=2),
            )
        if fetched.copies:
            await workflow.execute_activity_method(
                StorageActivities.replicate,
                ReplicateInput(fetched.copies),
                start_to_close_timeout=timedelta(hours=6),
                heartbeat_timeout=timedelta(seconds=60),
            )
            await workflow.execute_activity_method(
                StorageActivities.backup,
                fetched.copies,
                start_to_close_timeout=timedelta(hours=6),
                heartbeat_timeout=timedelta(seconds=60),
            )
