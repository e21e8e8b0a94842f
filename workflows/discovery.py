"""DiscoveryWorkflow: one run of an acquisition host — list and register its new files,
fetch them through the retrieval batch, and record the run.

Its Temporal Schedule (`acquisition-<destination>-<host>`) starts one run at a time.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair
from temporalio.common import TypedSearchAttributes as Attributes
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    WorkflowAlreadyStartedError,
)

with workflow.unsafe.imports_passed_through():
    from ecpds.activities.discovery import (
        DiscoverInput,
        DiscoverOutput,
        DiscoveryActivities,
        FinishRunInput,
        FinishRunOutput,
        StartRunInput,
    )
    from ecpds.core.engine import (
        DATA_FILE_ID,
        DESTINATION,
        DISCOVERY_WORKFLOW,
        DiscoveryInput,
        RetrievalBatchInput,
        retrieval_batch_workflow_id,
    )
    from ecpds.workflows.retrieval import RetrievalBatchWorkflow

CATALOG = timedelta(minutes=2)
LISTING_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
)
# The fetch of a run's files is awaited this long at most; the run then says how many wait.
FETCH_WAIT = timedelta(hours=6)
POLL_FIRST = timedelta(seconds=0.5)
POLL_LONGEST = timedelta(seconds=30)


def _reason(error: BaseException) -> str:
    cause = error.cause if isinstance(error, ActivityError | ChildWorkflowError) else error
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause or error)


@workflow.defn(name=DISCOVERY_WORKFLOW)
class DiscoveryWorkflow:
    @workflow.run
    async def run(self, request: DiscoveryInput) -> FinishRunOutput:
        run_id = await workflow.execute_activity_method(
            DiscoveryActivities.start_run,
            StartRunInput(request, workflow.info().workflow_id),
            start_to_close_timeout=CATALOG,
        )
        try:
            found: DiscoverOutput = await workflow.execute_activity_method(
                DiscoveryActivities.discover,
                DiscoverInput(run_id, request),
                start_to_close_timeout=timedelta(hours=1),
                heartbeat_timeout=timedelta(seconds=60),
                retry_policy=LISTING_RETRY,
            )
        except ActivityError as exc:
            return await self._finish(FinishRunInput(run_id, None, _reason(exc)))
        error = None
        if found.data_file_ids:
            error = await self._fetch(request, found.data_file_ids, run_id)
        # The ids were for the fetch; the run record keeps the counts.
        found.data_file_ids = []
        return await self._finish(FinishRunInput(run_id, found, error))

    async def _fetch(self, request: DiscoveryInput, ids: list[str], run_id: int) -> str | None:
        attributes = Attributes(
            [
                SearchAttributePair(DATA_FILE_ID, ids[0]),
                SearchAttributePair(DESTINATION, request.destination),
            ]
        )
        try:
            await workflow.execute_child_workflow(
                RetrievalBatchWorkflow.run,
                RetrievalBatchInput(ids, request.destination),
                id=retrieval_batch_workflow_id(ids[0]),
                search_attributes=attributes,
            )
        except WorkflowAlreadyStartedError:
            pass  # the wake sweep started this batch first: its files are on their way
        except ChildWorkflowError as exc:
            return f"fetching: {_reason(exc)}"
        # The batch may return before its files are in: wait on the catalog, bounded.
        waited = timedelta(0)
        delay = POLL_FIRST
        while waited < FETCH_WAIT:
            counts = await workflow.execute_activity_method(
                DiscoveryActivities.count_fetches, run_id, start_to_close_timeout=CATALOG
            )
            if not counts.pending:
                break
            await workflow.sleep(delay)
            waited += delay
            delay = min(delay * 2, POLL_LONGEST)
        return None

    async def _finish(self, request: FinishRunInput) -> FinishRunOutput:
        return await workflow.execute_activity_method(
            DiscoveryActivities.finish_run,
            request,
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(seconds=60),
        )
