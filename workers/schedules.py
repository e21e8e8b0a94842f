"""Temporal Schedules of the store: garbage collection and the daily check of every copy.

Created when a worker starts; a schedule that already exists is left as it is.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

from ecpds.core.engine import ReplicationInput, gc_schedule_id, store_check_schedule_id
from ecpds.workflows.gc import GarbageCollectionInput, GarbageCollectionWorkflow
from ecpds.workflows.replication import ReplicationWorkflow

GC_EVERY = timedelta(minutes=10)
CHECK_EVERY = timedelta(days=1)


async def ensure_schedules(client: Client, task_queue: str) -> list[str]:
    """Create the store's schedules unless they exist; the ids of those created."""
    wanted = [
        (
            gc_schedule_id(task_queue),
            ScheduleActionStartWorkflow(
                GarbageCollectionWorkflow.run,
                GarbageCollectionInput(),
                id=gc_schedule_id(task_queue),
                task_queue=task_queue,
            ),
            GC_EVERY,
        ),
        (
            store_check_schedule_id(task_queue),
            ScheduleActionStartWorkflow(
                ReplicationWorkflow.run,
                ReplicationInput(check=True),
                id=store_check_schedule_id(task_queue),
                task_queue=task_queue,
            ),
            CHECK_EVERY,
        ),
    ]
    created = []
    for schedule_id, action, every in wanted:
        schedule = Schedule(
            action=action,
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        )
        try:
            await client.create_schedule(schedule_id, schedule)
        except ScheduleAlreadyRunningError:
            continue
        created.append(schedule_id)
    return created
