"""Temporal Schedules: garbage collection, the daily check of every copy, the wake sweep.

Created when a worker starts; a schedule that already exists is left as it is, but for
the wake sweep's interval, which follows the `sweep_every` setting.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from ecpds.core.engine import (
    ReplicationInput,
    gc_schedule_id,
    store_check_schedule_id,
    wake_sweep_schedule_id,
)
from ecpds.core.settings import Settings
from ecpds.workflows.gc import GarbageCollectionInput, GarbageCollectionWorkflow
from ecpds.workflows.replication import ReplicationWorkflow
from ecpds.workflows.sweep import WakeSweepInput, WakeSweepWorkflow

GC_EVERY = timedelta(minutes=10)
CHECK_EVERY = timedelta(days=1)


async def ensure_schedules(client: Client, settings: Settings) -> list[str]:
    """Create the schedules unless they exist; the ids of those created."""
    task_queue = settings.task_queue
    sweep_every = timedelta(seconds=settings.sweep_every)
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
        (
            wake_sweep_schedule_id(task_queue),
            ScheduleActionStartWorkflow(
                WakeSweepWorkflow.run,
                WakeSweepInput(),
                id=wake_sweep_schedule_id(task_queue),
                task_queue=task_queue,
            ),
            sweep_every,
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
            if schedule_id == wake_sweep_schedule_id(task_queue):
                await _follow_interval(client.get_schedule_handle(schedule_id), sweep_every)
            continue
        created.append(schedule_id)
    return created


async def _follow_interval(handle: ScheduleHandle, every: timedelta) -> None:
    def updated(given: ScheduleUpdateInput) -> ScheduleUpdate | None:
        spec = given.description.schedule.spec
        if [i.every for i in spec.intervals] == [every]:
            return None
        spec.intervals = [ScheduleIntervalSpec(every=every)]
        return ScheduleUpdate(schedule=given.description.schedule)

    await handle.update(updated)


async def sweep_now(client: Client, task_queue: str) -> None:
    """Run the wake sweep at once (a worker starting: the engine may have been down)."""
    await client.get_schedule_handle(wake_sweep_schedule_id(task_queue)).trigger()
