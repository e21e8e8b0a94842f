"""ReplicationWorkflow: copies of objects in every store location, and in the archives.

Given file ids it replicates and backs up those (new objects); given none it sweeps the
whole store, reading every copy, and repairs lost or corrupted ones from a good copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ecpds.activities.storage import FilePage, ReplicateInput, StorageActivities
    from ecpds.core.engine import REPLICATION_WORKFLOW, ReplicationInput

PAGES_PER_RUN = 50  # then continue as new, to keep the history short


@dataclass
class ReplicationOutput:
    files: int = 0
    repaired: int = 0
    lost: int = 0


@workflow.defn(name=REPLICATION_WORKFLOW)
class ReplicationWorkflow:
    @workflow.run
    async def run(self, request: ReplicationInput) -> ReplicationOutput:
        if request.data_file_ids:
            done = await self._replicate(request.data_file_ids, request.check)
            await workflow.execute_activity_method(
                StorageActivities.backup,
                request.data_file_ids,
                start_to_close_timeout=timedelta(hours=6),
                heartbeat_timeout=timedelta(seconds=60),
            )
            return done
        total = ReplicationOutput(repaired=request.repaired, lost=request.lost)
        after = request.after
        for _ in range(PAGES_PER_RUN):
            ids = await workflow.execute_activity_method(
                StorageActivities.files_to_check,
                FilePage(after=after),
                start_to_close_timeout=timedelta(minutes=5),
            )
            if not ids:
                return total
            page = await self._replicate(ids, request.check)
            total.files += page.files
            total.repaired += page.repaired
            total.lost += page.lost
            after = ids[-1]
        workflow.continue_as_new(
            ReplicationInput(
                check=request.check, after=after, repaired=total.repaired, lost=total.lost
            )
        )

    async def _replicate(self, ids: list[str], check: bool) -> ReplicationOutput:
        result = await workflow.execute_activity_method(
            StorageActivities.replicate,
            ReplicateInput(ids, check=check),
            start_to_close_timeout=timedelta(hours=6),
            heartbeat_timeout=timedelta(seconds=60),
        )
        return ReplicationOutput(files=result.files, repaired=result.repaired, lost=result.lost)
