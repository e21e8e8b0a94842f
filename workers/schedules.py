"""Temporal Schedules: garbage collection, the daily check of every copy, the wake sweep,
and one discovery schedule per acquisition host and destination.

Created when a worker starts; one that already exists follows what this version wants
(the wake sweep's interval from the `sweep_every` setting, and each action's task queue:
the auxiliary role's for the first three, the acquisition role's for discovery). Discovery schedules
follow the catalog: `sync_acquisition_schedules` runs at worker start and after every
change of hosts or destinations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session
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
from temporalio.service import RPCError, RPCStatusCode

from ecpds.core.acquisition import AcquisitionSettings, acquisition_hosts
from ecpds.core.engine import (
    DISCOVERY_WORKFLOW,
    GARBAGE_COLLECTION_WORKFLOW,
    REPLICATION_WORKFLOW,
    WAKE_SWEEP_WORKFLOW,
    DiscoveryInput,
    ReplicationInput,
    acquisition_schedule_id,
    discovery_workflow_id,
    gc_schedule_id,
    store_check_schedule_id,
    wake_sweep_schedule_id,
    workflow_queue,
)
from ecpds.core.errors import NotFound
from ecpds.core.settings import Settings
from ecpds.workflows.discovery import DiscoveryWorkflow
from ecpds.workflows.gc import GarbageCollectionInput, GarbageCollectionWorkflow
from ecpds.workflows.replication import ReplicationWorkflow
from ecpds.workflows.sweep import WakeSweepInput, WakeSweepWorkflow

GC_EVERY = timedelta(minutes=10)
CHECK_EVERY = timedelta(days=1)


async def ensure_schedules(client: Client, settings: Settings) -> list[str]:
    """Create the schedules unless they exist (those that do follow `wanted`); the ids of
    those created."""
    task_queue = settings.task_queue
    wanted = [
        (
            gc_schedule_id(task_queue),
            ScheduleActionStartWorkflow(
                GarbageCollectionWorkflow.run,
                GarbageCollectionInput(),
                id=gc_schedule_id(task_queue),
                task_queue=workflow_queue(task_queue, GARBAGE_COLLECTION_WORKFLOW),
            ),
            GC_EVERY,
        ),
        (
            store_check_schedule_id(task_queue),
            ScheduleActionStartWorkflow(
                ReplicationWorkflow.run,
                ReplicationInput(check=True),
                id=store_check_schedule_id(task_queue),
                task_queue=workflow_queue(task_queue, REPLICATION_WORKFLOW),
            ),
            CHECK_EVERY,
        ),
        (
            wake_sweep_schedule_id(task_queue),
            ScheduleActionStartWorkflow(
                WakeSweepWorkflow.run,
                WakeSweepInput(),
                id=wake_sweep_schedule_id(task_queue),
                task_queue=workflow_queue(task_queue, WAKE_SWEEP_WORKFLOW),
            ),
            timedelta(seconds=settings.sweep_every),
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
            await _follow(client.get_schedule_handle(schedule_id), schedule)
            continue
        created.append(schedule_id)
    return created


async def sweep_now(client: Client, task_queue: str) -> None:
    """Run the wake sweep at once (a worker starting: the engine may have been down)."""
    await client.get_schedule_handle(wake_sweep_schedule_id(task_queue)).trigger()


# --- discovery schedules ------------------------------------------------------------------

ACQUISITION_PREFIX = "acquisition-"
QUEUE_MEMO = "task_queue"  # whose schedules these are: catalogs share a Temporal server


@dataclass
class ScheduleSync:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def _discovery_schedule(
    destination: str, host: str, settings: AcquisitionSettings, task_queue: str
) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            DiscoveryWorkflow.run,
            DiscoveryInput(destination, host),
            id=discovery_workflow_id(destination, host),
            task_queue=workflow_queue(task_queue, DISCOVERY_WORKFLOW),
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.every))],
            jitter=timedelta(seconds=settings.jitter) if settings.jitter else None,
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def wanted_schedules(engine: Engine) -> dict[str, tuple[str, str, AcquisitionSettings]]:
    """The discovery schedules the catalog asks for: id -> (destination, host, settings)."""
    with Session(engine) as session:
        return {
            acquisition_schedule_id(dest.name, host.name): (
                dest.name,
                host.name,
                AcquisitionSettings.model_validate(host.acquisition),
            )
            for host, dest in acquisition_hosts(session, trigger="schedule")
        }


async def _ours(client: Client, task_queue: str) -> set[str]:
    found = set()
    async for listed in await client.list_schedules():
        if listed.id.startswith(ACQUISITION_PREFIX):
            memo = await listed.memo()
            if memo.get(QUEUE_MEMO) == task_queue:
                found.add(listed.id)
    return found


async def sync_acquisition_schedules(
    client: Client, engine: Engine, task_queue: str, *, forget: Iterable[str] = ()
) -> ScheduleSync:
    """Make the discovery schedules those the catalog asks for.

    `forget` names schedules that may just have lost their host (the server's list of
    schedules lags behind a little). A paused schedule stays paused when updated.
    """
    report = ScheduleSync()
    wanted = wanted_schedules(engine)
    for schedule_id, (destination, host, settings) in wanted.items():
        schedule = _discovery_schedule(destination, host, settings, task_queue)
        try:
            await client.create_schedule(schedule_id, schedule, memo={QUEUE_MEMO: task_queue})
            report.created.append(schedule_id)
        except ScheduleAlreadyRunningError:
            if await _follow(client.get_schedule_handle(schedule_id), schedule):
                report.updated.append(schedule_id)
    for schedule_id in (await _ours(client, task_queue) | set(forget)) - set(wanted):
        if schedule_id.startswith(ACQUISITION_PREFIX):
            with contextlib.suppress(RPCError):
                await client.get_schedule_handle(schedule_id).delete()
                report.removed.append(schedule_id)
    return report


async def _follow(handle: ScheduleHandle, wanted: Schedule) -> bool:
    changed = False

    def updated(given: ScheduleUpdateInput) -> ScheduleUpdate | None:
        nonlocal changed
        current = given.description.schedule
        spec, action = current.spec, current.action
        assert isinstance(wanted.action, ScheduleActionStartWorkflow)
        same = (
            [i.every for i in spec.intervals] == [i.every for i in wanted.spec.intervals]
            and (spec.jitter or timedelta(0)) == (wanted.spec.jitter or timedelta(0))
            and isinstance(action, ScheduleActionStartWorkflow)
            and action.task_queue == wanted.action.task_queue
        )
        if same:
            return None
        changed = True
        current.spec = wanted.spec
        current.action = wanted.action
        current.policy = wanted.policy
        return ScheduleUpdate(schedule=current)

    await handle.update(updated)
    return changed


async def operate_acquisition(client: Client, destination: str, host: str, operation: str) -> None:
    """Pause, resume or trigger (run now) a host's discovery schedule."""
    handle = client.get_schedule_handle(acquisition_schedule_id(destination, host))
    try:
        if operation == "pause":
            await handle.pause(note="paused by an operator")
        elif operation == "resume":
            await handle.unpause(note="resumed by an operator")
        else:
            await handle.trigger()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(
                f"host {host!r} has no discovery schedule for {destination!r}: "
                "it is inactive, triggered by MQTT, or no worker has synced it yet"
            ) from None
        raise


async def schedule_paused(client: Client, destination: str, host: str) -> bool | None:
    """Whether the host's discovery schedule is paused; None when there is none."""
    handle = client.get_schedule_handle(acquisition_schedule_id(destination, host))
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return description.schedule.state.paused
