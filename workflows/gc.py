"""GarbageCollectionWorkflow, run by a Temporal Schedule: expired transfers, then data files
with no live transfer, then their bytes in every store location.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ecpds.activities.storage import GcInput, StorageActivities
    from ecpds.core.engine import GARBAGE_COLLECTION_WORKFLOW

BATCHES_PER_RUN = 100


@dataclass
class GarbageCollectionInput:
    limit: int = 1000


@dataclass
class GcOutput:
    transfers: int = 0
    files: int = 0
    objects: int = 0


@workflow.defn(name=GARBAGE_COLLECTION_WORKFLOW)
class GarbageCollectionWorkflow:
    @workflow.run
    async def run(self, request: GarbageCollectionInput) -> GcOutput:
        total = GcOutput()
        for _ in range(BATCHES_PER_RUN):
            report = await workflow.execute_activity_method(
                StorageActivities.collect_garbage,
                GcInput(now=workflow.now().timestamp(), limit=request.limit),
                start_to_close_timeout=timedelta(hours=1),
                heartbeat_timeout=timedelta(seconds=60),
            )
            total.transfers += report.transfers
            total.files += report.files
            total.objects += report.objects
            if not report.more:
                break
        return total
