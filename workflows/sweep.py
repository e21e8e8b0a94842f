"""WakeSweepWorkflow, run by a Temporal Schedule: wake every destination with waiting
transfers and start every asynchronous push left unfetched, in case a signal was lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ecpds.activities.storage import StorageActivities
    from ecpds.core.engine import WAKE_SWEEP_WORKFLOW


@dataclass
class WakeSweepInput:
    limit: int = 10_000  # unfetched files started at most per sweep; the next sweep goes on


@dataclass
class WakeSweepOutput:
    destinations: int = 0  # schedulers signalled (started if they did not run)
    retrievals: int = 0  # unfetched files whose retrieval was started again


@workflow.defn(name=WAKE_SWEEP_WORKFLOW)
class WakeSweepWorkflow:
    @workflow.run
    async def run(self, request: WakeSweepInput) -> WakeSweepOutput:
        swept = await workflow.execute_activity_method(
            StorageActivities.wake_sweep,
            request.limit,
            start_to_close_timeout=timedelta(minutes=10),
        )
        return WakeSweepOutput(swept.destinations, swept.retrievals)
