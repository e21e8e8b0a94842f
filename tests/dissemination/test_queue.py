"""The catalog is the queue: a long queue on one destination, and a host's own connection limit."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from sqlalchemy import func, insert
from sqlmodel import select
from temporalio.api.enums.v1 import EventType

from ecpds.core.db import session_scope
from ecpds.core.engine import WAKE_SIGNAL, Operation, destination_workflow_id
from ecpds.core.models import DataTransfer, Host, TransferStatus, utcnow
from ecpds.core.queue import WAITING_COUNT

from .conftest import Dissemination

QUEUED = 12_000  # more than the ~10,000 the scheduler could carry in its own state


def waiting_count(env: Dissemination, destination_id: int) -> int:
    with session_scope(env.engine) as session:
        return session.exec(
            select(func.count())
            .select_from(DataTransfer)
            .where(DataTransfer.destination_id == destination_id)
            .where(DataTransfer.status == TransferStatus.WAIT)
        ).one()


async def test_a_queue_longer_than_a_workflow_could_carry(dissemination: Dissemination) -> None:
    env = dissemination
    dest = env.name("long")
    out = env.tmp / f"{dest}-h"
    env.add_host(f"{dest}-h", f"file://{out}", retry_count=0, retry_frequency=1)
    env.add_destination(dest, [f"{dest}-h"], max_connections=10)
    await env.dispatcher.operate_destination(dest, Operation.HOLD)
    await env.wait_destination(dest, lambda d: d.on_hold)
    # One stored file backs every transfer; the catalog rows go in in bulk, as a day of
    # products for a destination that is down would have arrived.
    [first] = await env.put(dest, "tiny", b"t", priority=99)
    [row] = env.transfers([first])
    now, rng = utcnow(), random.Random(7)
    with session_scope(env.engine) as session:
        session.execute(
            insert(DataTransfer),
            [
                {
                    "target": f"t{i:05d}",
                    "priority": rng.randrange(100),
                    "scheduled": now,
                    "expires": now + timedelta(days=1),
                    "data_file_id": row.data_file_id,
                    "destination_id": row.destination_id,
                    "status": TransferStatus.WAIT,
                    "queued": now + timedelta(microseconds=i),
                    "bytes_sent": 0,
                    "start_count": 0,
                    "requeue_count": 0,
                    "deleted": False,
                }
                for i in range(QUEUED)
            ],
        )
        queue = session.exec(
            select(DataTransfer.id, DataTransfer.priority, DataTransfer.queued).where(
                DataTransfer.destination_id == row.destination_id
            )
        ).all()
    ids = [tid for tid, _, _ in queue if tid is not None]
    in_order = [tid for tid, _, _ in sorted(queue, key=lambda r: (r[1], r[2], r[0]))]
    await env.dispatcher.queue(ids)
    await env.dispatcher.queue(ids)  # queueing again changes nothing

    view = await env.wait_view(dest, lambda view: len(view.queued) >= 100)
    assert view.queued == in_order[: len(view.queued)] and view.waiting == WAITING_COUNT
    assert view.running == [] and view.held == "operator"
    assert waiting_count(env, row.destination_id) == len(ids) == QUEUED + 1

    await env.dispatcher.operate_destination(dest, Operation.RESTART)
    deadline = asyncio.get_running_loop().time() + 30
    while waiting_count(env, row.destination_id) > len(ids) - 40:
        assert asyncio.get_running_loop().time() < deadline, "the queue did not go down"
        await asyncio.sleep(0.1)
    await env.dispatcher.operate_destination(dest, Operation.HOLD)
    view = await env.wait_view(dest, lambda view: view.held and not view.running)

    # The scheduler's history has its children in the order it started them.
    handle = env.client.get_workflow_handle(destination_workflow_id(dest))
    history = await handle.fetch_history()
    started = [
        int(e.start_child_workflow_execution_initiated_event_attributes.workflow_id.rsplit("-")[-1])
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
    ]
    assert len(started) >= 40 and started == in_order[: len(started)]
    assert {t.status for t in env.transfers(started)} == {"DONE"}
    assert waiting_count(env, row.destination_id) == len(ids) - len(started)
    assert len(list(out.iterdir())) == len(started)
    # Read again from the catalog on hold, the window goes on where the transfers stopped.
    view = await env.wait_view(dest, lambda view: view.queued[:1] == [in_order[len(started)]])
    assert view.queued == in_order[len(started) : len(started) + len(view.queued)]

    # The wake-up signals stayed small, and no workflow task failed on a payload.
    signals = [
        e.workflow_execution_signaled_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]
    assert [s.signal_name for s in signals].count(WAKE_SIGNAL) == 3
    assert all(s.input.ByteSize() < 1000 for s in signals)
    failed = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    assert not [e for e in history.events if e.event_type == failed]


async def test_a_host_limit_below_the_destination_limit(dissemination: Dissemination) -> None:
    env = dissemination
    dest = env.name("hostcap")
    primary, backup = env.tmp / f"{dest}-p", env.tmp / f"{dest}-b"
    # Slow enough (64 KiB at 256 KiB/s) that four would overlap if the host allowed them.
    env.add_host(
        f"{dest}-p",
        f"file://{primary}",
        retry_count=0,
        max_connections=1,
        options={"max_rate": 256 << 10},
    )
    env.add_host(f"{dest}-b", f"file://{backup}", retry_count=0)
    env.add_destination(dest, [f"{dest}-p", f"{dest}-b"], max_connections=4)
    await env.dispatcher.operate_destination(dest, Operation.HOLD)
    await env.wait_destination(dest, lambda d: d.on_hold)
    ids = [(await env.put(dest, f"f{i}", b"c" * (64 << 10)))[0] for i in range(5)]
    await env.wait_view(dest, lambda view: len(view.queued) == 5)
    await env.dispatcher.operate_destination(dest, Operation.RESTART)

    most = 0
    deadline = asyncio.get_running_loop().time() + 60
    while not all(t.status == "DONE" for t in env.transfers(ids)):
        assert asyncio.get_running_loop().time() < deadline, env.transfers(ids)
        view = await env.view(dest)
        most = max(most, len(view.running))
        await asyncio.sleep(0.05)
    assert most == 1
    # A full host is waited for, not failed over: every transfer went to the primary.
    done = sorted(env.transfers(ids), key=lambda t: t.started)  # type: ignore[arg-type, return-value]
    with session_scope(env.engine) as session:
        primary_id = session.exec(select(Host.id).where(Host.name == f"{dest}-p")).one()
    assert {t.host_id for t in done} == {primary_id}
    assert all(t.start_count == 1 and t.last_error is None for t in done)
    assert all(b.started >= a.finished for a, b in zip(done, done[1:], strict=False))  # type: ignore[operator]
    assert sorted(p.name for p in primary.iterdir()) == [f"f{i}" for i in range(5)]
    assert not backup.exists() or not list(backup.iterdir())


async def test_clean_expired_extend_and_delete_act_on_the_catalog(
    dissemination: Dissemination,
) -> None:
    env = dissemination
    dest = env.name("clean")
    out = env.tmp / f"{dest}-h"
    env.add_host(f"{dest}-h", f"file://{out}", retry_count=0)
    env.add_destination(dest, [f"{dest}-h"])
    await env.dispatcher.operate_destination(dest, Operation.HOLD)
    await env.wait_destination(dest, lambda d: d.on_hold)
    [gone] = await env.put(dest, "gone", b"g", lifetime=1)
    [kept] = await env.put(dest, "kept", b"k", lifetime=1)
    [deleted] = await env.put(dest, "deleted", b"d")
    [plain] = await env.put(dest, "plain", b"p")
    await env.dispatcher.operate_transfer(kept, Operation.EXTEND, value=3600)
    await env.dispatcher.operate_transfer(deleted, Operation.DELETE)
    await asyncio.sleep(1.5)  # "gone" and (before its extension) "kept" would have expired
    await env.dispatcher.operate_destination(dest, Operation.CLEAN_EXPIRED)
    [expired] = await env.wait_for([gone], "STOP")
    assert expired.last_error == "expired" and expired.finished is not None
    view = await env.wait_view(dest, lambda view: view.waiting == 2)
    assert view.queued == [kept, plain]
    [removed] = env.transfers([deleted])
    assert removed.deleted and removed.status == "STOP"
    await env.dispatcher.operate_destination(dest, Operation.RESTART)
    await env.wait_for([kept, plain], "DONE")
    assert sorted(p.name for p in out.iterdir()) == ["kept", "plain"]


async def test_a_failed_cycle_waits_in_the_catalog(dissemination: Dissemination) -> None:
    env = dissemination
    dest = env.name("retry")
    # A folder under a file: every attempt fails at once.
    env.add_host(f"{dest}-h", "file:///dev/null/out", retry_count=0)
    env.add_destination(dest, [f"{dest}-h"], retry_count=5, retry_frequency=3600, max_start=5)
    [tid] = await env.put(dest, "f", b"f")
    [waiting] = await waited(env, tid, 1)
    assert waiting.retry_at is not None
    assert 3500 < (waiting.retry_at - utcnow()).total_seconds() <= 3600
    assert waiting.last_error and f"{dest}-h" in waiting.last_error
    # Waiting, not ready: the window is empty, and no timer is closer than the retry time.
    view = await env.wait_view(dest, lambda view: view.waiting == 1)
    assert view.queued == [] and view.running == [] and view.failed_cycles == 1
    # A restart clears the wait: the transfer starts again at once.
    await env.dispatcher.operate_destination(dest, Operation.RESTART)
    [again] = await waited(env, tid, 2)
    assert again.retry_at is not None


async def waited(env: Dissemination, tid: int, starts: int) -> list[DataTransfer]:
    """Wait until the transfer is back in the queue after its `starts`-th start."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        rows = env.transfers([tid])
        if rows[0].status == "WAIT" and rows[0].start_count == starts:
            return rows
        assert asyncio.get_running_loop().time() < deadline, rows
        await asyncio.sleep(0.1)
