"""A saturated worker serves urgent transfers first: Temporal task priority, end to end."""

from __future__ import annotations

import asyncio
import contextlib

from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from ecpds.core.engine import Operation, transfer_workflow_id
from ecpds.workers.worker import build_worker

from .conftest import Dissemination

BACKLOG = 10
URGENT = 4
# Above the 1 MiB sent by a local activity inside the workflow task: these go through the
# task queue as regular activities, where the priority key orders them.
SIZE = 3 << 19


async def scheduled(handle: WorkflowHandle) -> bool:
    """Whether the transfer workflow exists and has its transmit activity scheduled."""
    try:
        described = await handle.describe()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return False  # its scheduler has not started it yet
        raise
    return bool(described.raw_description.pending_activities)


async def stop(handle: WorkflowHandle) -> None:
    with contextlib.suppress(RPCError):  # one that finished meanwhile
        await handle.terminate("the test is over")


async def test_urgent_transfers_overtake_a_backlog(
    dissemination_without_worker: Dissemination,
) -> None:
    env = dissemination_without_worker
    low, urgent = env.name("backlog"), env.name("urgent")
    # 1 MiB/s: each backlog transfer holds the worker's only activity slot for 1.5 s.
    env.add_host(f"{low}-h", f"file://{env.tmp / low}", options={"max_rate": 1 << 20})
    env.add_host(f"{urgent}-h", f"file://{env.tmp / urgent}")
    env.add_destination(low, [f"{low}-h"], max_connections=BACKLOG)
    env.add_destination(urgent, [f"{urgent}-h"], max_connections=URGENT)
    async with build_worker(env.client, env.settings, max_concurrent_activities=1):
        backlog = [
            (await env.put(low, f"b{i}", b"b" * SIZE, priority=99))[0] for i in range(BACKLOG)
        ]
        # Every backlog transfer has its transmit activity scheduled: one runs, the rest
        # wait in the task queue for the slot.
        handles = [env.client.get_workflow_handle(transfer_workflow_id(low, t)) for t in backlog]
        deadline = asyncio.get_running_loop().time() + 60
        while not all(await asyncio.gather(*(scheduled(h) for h in handles))):
            assert asyncio.get_running_loop().time() < deadline, "the backlog never queued"
            await asyncio.sleep(0.1)
        queued = [
            (await env.put(urgent, f"u{i}", b"u" * SIZE, priority=0))[0] for i in range(URGENT)
        ]
        rows = await env.wait_for(queued, "DONE")
        last_urgent = max(t.finished for t in rows)
        ahead = [t for t in env.transfers(backlog) if t.started and t.started < last_urgent]
        # Only the transfer that held the slot went first (and perhaps one more, taken while
        # the urgent ones were being started). Without priorities the urgent ones would come
        # after the whole backlog, and with fairness alone every other one: 4 or 5 ahead.
        assert len(ahead) <= 2, [(t.id, t.started) for t in ahead]
        # The rest of the backlog is not needed: hold it and end its transfers.
        await env.dispatcher.operate_destination(low, Operation.HOLD)
        await asyncio.gather(*(stop(h) for h in handles))
