"""RetrievalWorkflow: one asynchronously pushed file fetched from its source into the store.

Then its transfers go to their destinations' schedulers, and the new object to the
replica locations and the destinations' archives. RetrievalBatchWorkflow starts the
retrievals of one registration, so that the portal starts one workflow, not thousands.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair
from temporalio.common import TypedSearchAttributes as Attributes
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from ecpds.activities.storage import FailInput, ReplicateInput, StorageActivities
    from ecpds.core.engine import (
        DATA_FILE_ID,
        DESTINATION,
        RETRIEVAL_BATCH_WORKFLOW,
        RETRIEVAL_WORKFLOW,
        RetrievalBatchInput,
        retrieval_workflow_id,
    )

FETCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=5,
)


@dataclass
class RetrievalInput:
    data_file_id: str


@dataclass
class RetrievalOutput:
    done: bool
    size: int = 0
    adler32: str = ""
    error: str | None = None


def _reason(error: ActivityError) -> str:
    cause = error.cause
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause or error)


@workflow.defn(name=RETRIEVAL_WORKFLOW)
class RetrievalWorkflow:
    @workflow.run
    async def run(self, request: RetrievalInput) -> RetrievalOutput:
        try:
            fetched = await workflow.execute_activity_method(
                StorageActivities.fetch,
                request.data_file_id,
                start_to_close_timeout=timedelta(hours=6),
                heartbeat_timeout=timedelta(seconds=60),
                retry_policy=FETCH_RETRY,
            )
        except ActivityError as exc:
            error = _reason(exc)
            await workflow.execute_activity_method(
                StorageActivities.fail_retrieval,
                FailInput(request.data_file_id, error),
                start_to_close_timeout=timedelta(minutes=1),
            )
            return RetrievalOutput(done=False, error=error)
        if fetched.transfer_ids:
            await workflow.execute_activity_method(
                StorageActivities.queue_transfers,
                fetched.transfer_ids,
                start_to_close_timeout=timedelta(minutes=2),
            )
        if fetched.copies:
            await workflow.execute_activity_method(
                StorageActivities.replicate,
                ReplicateInput([request.data_file_id]),
                start_to_close_timeout=timedelta(hours=6),
                heartbeat_timeout=timedelta(seconds=60),
            )
            await workflow.execute_activity_method(
                StorageActivities.backup,
                [request.data_file_id],
                start_to_close_timeout=timedelta(hours=6),
                heartbeat_timeout=timedelta(seconds=60),
            )
        return RetrievalOutput(done=True, size=fetched.size, adler32=fetched.adler32)


@workflow.defn(name=RETRIEVAL_BATCH_WORKFLOW)
class RetrievalBatchWorkflow:
    @workflow.run
    async def run(self, batch: RetrievalBatchInput) -> int:
        """Start a RetrievalWorkflow per file (they outlive this one); how many were started."""

        async def start(data_file_id: str) -> None:
            attributes = [SearchAttributePair(DATA_FILE_ID, data_file_id)]
            if batch.destination:
                attributes.append(SearchAttributePair(DESTINATION, batch.destination))
            # Started already when this batch runs again: that retrieval goes on.
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await workflow.start_child_workflow(
                    RetrievalWorkflow.run,
                    RetrievalInput(data_file_id),
                    id=retrieval_workflow_id(data_file_id),
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                    search_attributes=Attributes(attributes),
                )

        await asyncio.gather(*(start(i) for i in batch.data_file_ids))
        return len(batch.data_file_ids)
