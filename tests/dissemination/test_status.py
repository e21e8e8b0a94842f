"""The engine tells the truth about every transfer: the catalog's status, the transfer
workflow's `TransferStatus` and `Priority` search attributes and how the workflow closed
agree at each step, against a real Temporal dev server (and a real OpenSSH server for a
host that refuses connections).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer

from ecpds.core.engine import (
    PRIORITY,
    TRANSFER_STATUS,
    Operation,
    destination_workflow_id,
    transfer_workflow_id,
)
from ecpds.workflows.destination import DestinationWorkflow
from ecpds.workflows.transfer import TRANSFER_FAILED, TransferWorkflow

from .conftest import Dissemination
from .test_failover import down_url, sftp_credentials


async def until(check: Any, what: str, timeout: float = 60) -> Any:
    """Poll `check()` until it answers something true; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if found := await check():
            return found
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"never: {what}")
        await asyncio.sleep(0.1)


async def agreed(env: Dissemination, dest: str, tid: int, status: str) -> Any:
    """Wait until the catalog shows `status`, then check the workflow's attribute says so."""
    await env.wait_for([tid], status)
    handle = env.client.get_workflow_handle(transfer_workflow_id(dest, tid))
    described = await handle.describe()
    [row] = env.transfers([tid])
    assert row.status == status, "the catalog moved on while the test looked"
    assert described.typed_search_attributes.get(TRANSFER_STATUS) == status
    assert row.workflow_id == transfer_workflow_id(dest, tid)
    return described


async def listed(env: Dissemination, query: str) -> list[str]:
    """The ids of the workflows a visibility query finds (the index lags a little)."""

    async def found() -> list[str]:
        return [w.id async for w in env.client.list_workflows(query)]

    return await until(found, f"a workflow answers {query}", timeout=30)


@pytest.mark.one_catalog
async def test_status_and_attribute_agree_through_wait_retr_and_fail(
    dissemination: Dissemination, sshd
) -> None:
    """Cycles of a host that refuses connections: EXEC during the host's own retries, then
    WAIT (a failed cycle), RETR (`max_start` failed starts), WAIT, FAIL (`max_requeue`),
    each shown alike by the catalog and by the closed, FAILED workflow."""
    env = dissemination
    dest = env.name("truth")
    user, credentials = sftp_credentials(sshd)
    folder = sshd.folder(dest)
    env.add_host(
        f"{dest}-h",
        down_url(sshd, folder, user),
        retry_count=2,
        retry_frequency=2,
        credentials=credentials,
    )
    # Long waits between cycles: the test moves each one on with "schedule now".
    env.add_destination(
        dest,
        [f"{dest}-h"],
        retry_count=10,
        retry_frequency=3600,
        max_start=2,
        start_frequency=3600,
        max_requeue=1,
    )
    [tid] = await env.put(dest, "never.bin", b"n" * 3000)
    handle = env.client.get_workflow_handle(transfer_workflow_id(dest, tid))

    # The first attempt failed and the host's retries go on: EXEC, not RETR.
    async def retrying() -> bool:
        [row] = env.transfers([tid])
        return row.status != "WAIT" and row.last_error is not None

    await until(retrying, "the first attempt fails")
    [row] = env.transfers([tid])
    assert row.status == "EXEC" and "connection refused" in (row.last_error or "")
    running = await agreed(env, dest, tid, "EXEC")
    assert running.status == WorkflowExecutionStatus.RUNNING

    expected = [("WAIT", 1, 0), ("RETR", 0, 1), ("WAIT", 1, 1), ("FAIL", 2, 2)]
    for cycle, (status, start_count, requeue_count) in enumerate(expected, 1):
        closed = await agreed(env, dest, tid, status)
        assert closed.status == WorkflowExecutionStatus.FAILED, f"cycle {cycle}"
        with pytest.raises(WorkflowFailureError) as caught:
            await handle.result()
        failure = caught.value.cause
        assert isinstance(failure, ApplicationError) and failure.type == TRANSFER_FAILED
        assert failure.non_retryable and "\n" not in failure.message
        assert failure.message.startswith(f"host {dest}-h: ") and "connection refused" in (
            failure.message
        )
        assert list(failure.details) == [0]  # the last host tried: the only one
        [row] = env.transfers([tid])
        assert (row.start_count, row.requeue_count) == (start_count, requeue_count), cycle
        assert row.last_error == failure.message
        if status == "FAIL":
            assert row.finished is not None and row.retry_at is None
            break
        assert row.retry_at is not None  # an hour away: nothing starts it meanwhile
        await env.dispatcher.operate_transfer(tid, Operation.SCHEDULE_NOW)
        await env.wait_for([tid], "EXEC")

    # The Temporal UI's "Failed" filter finds the failed cycles of the transfer.
    wid = transfer_workflow_id(dest, tid)
    failed = await listed(
        env, f"WorkflowId = '{wid}' AND ExecutionStatus = 'Failed' AND TransferStatus = 'FAIL'"
    )
    assert failed == [wid]
    # The scheduler is not on hold (10 cycles allowed) and counts the failed ones.
    view = await env.view(dest)
    assert view.held is None and view.failed_cycles == 4
    await replays(env, wid)


async def test_status_and_priority_follow_operations_on_a_running_transfer(
    dissemination: Dissemination,
) -> None:
    """A slow transfer (16 MiB at 1 MiB/s): a priority change reaches the catalog and the workflow's
    `Priority`; interrupt, requeue, stop and a plain delivery each leave the same status in
    the catalog and in the workflow's `TransferStatus`."""
    env = dissemination
    dest = env.name("ops")
    out = env.tmp / "out"
    env.add_host(f"{dest}-h", f"file://{out}", options={"max_rate": 1 << 20})
    env.add_destination(dest, [f"{dest}-h"], max_connections=1)
    [slow] = await env.put(dest, "slow.bin", b"s" * (16 << 20), priority=50)
    handle = env.client.get_workflow_handle(transfer_workflow_id(dest, slow))

    running = await agreed(env, dest, slow, "EXEC")
    assert running.typed_search_attributes.get(PRIORITY) == 50
    await env.dispatcher.operate_transfer(slow, Operation.PRIORITY, value=3)

    async def reprioritised() -> bool:
        described = await handle.describe()
        return described.typed_search_attributes.get(PRIORITY) == 3

    await until(reprioritised, "the workflow's Priority follows the change")
    assert env.transfers([slow])[0].priority == 3
    assert await listed(env, f"WorkflowId = '{handle.id}' AND Priority = 3") == [handle.id]

    await env.dispatcher.operate_transfer(slow, Operation.INTERRUPT)
    interrupted = await agreed(env, dest, slow, "INTR")
    assert interrupted.status == WorkflowExecutionStatus.CANCELED

    await env.dispatcher.operate_transfer(slow, Operation.REQUEUE)
    running = await agreed(env, dest, slow, "EXEC")
    assert running.typed_search_attributes.get(PRIORITY) == 3  # the new run keeps it
    await env.dispatcher.operate_transfer(slow, Operation.REQUEUE)  # while it runs
    await until(
        lambda: _closed_as(env, handle.id, running.run_id, "WAIT"), "the requeued run shows WAIT"
    )

    async def runs_again() -> bool:  # a new run, which the catalog shows as running
        described = await handle.describe()
        return described.run_id != running.run_id and env.transfers([slow])[0].status == "EXEC"

    await until(runs_again, "the requeued transfer runs again")
    await agreed(env, dest, slow, "EXEC")
    await env.dispatcher.operate_transfer(slow, Operation.STOP)
    stopped = await agreed(env, dest, slow, "STOP")
    assert stopped.status == WorkflowExecutionStatus.CANCELED

    [quick] = await env.put(dest, "quick.bin", b"q" * 1000)
    done = await agreed(env, dest, quick, "DONE")
    assert done.status == WorkflowExecutionStatus.COMPLETED
    # What ran replays: the scheduler's signals to its transfers are deterministic.
    await replays(env, destination_workflow_id(dest))
    await replays(env, handle.id)


async def replays(env: Dissemination, workflow_id_prefix: str) -> None:
    """Every run of the workflows whose id starts with the prefix replays without error."""
    replayer = Replayer(workflows=[DestinationWorkflow, TransferWorkflow])
    histories = []
    async for execution in env.client.list_workflows(
        f"WorkflowId STARTS_WITH '{workflow_id_prefix}'"
    ):
        handle = env.client.get_workflow_handle(execution.id, run_id=execution.run_id)
        histories.append(await handle.fetch_history())
    assert histories
    for history in histories:
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{history.workflow_id}: {result.replay_failure}"


async def _closed_as(env: Dissemination, wid: str, run_id: str | None, status: str) -> bool:
    described = await env.client.get_workflow_handle(wid, run_id=run_id).describe()
    return bool(
        described.status == WorkflowExecutionStatus.CANCELED
        and described.typed_search_attributes.get(TRANSFER_STATUS) == status
    )


async def test_backup_hosts_take_over_when_dissemination_hosts_fail(
    dissemination: Dissemination, sshd
) -> None:
    """Hosts of kind backup come after the dissemination hosts in a cycle, whatever their
    place in the destination's list, and serve a destination that has only them."""
    env = dissemination
    dest = env.name("bk")
    user, credentials = sftp_credentials(sshd)
    common = {"retry_count": 0, "retry_frequency": 1, "credentials": credentials}
    primary, backup = sshd.folder(f"{dest}-p"), sshd.folder(f"{dest}-b")
    env.add_host(f"{dest}-b", sshd.url(backup, user=user), kind="backup", **common)
    env.add_host(f"{dest}-p", down_url(sshd, primary, user), **common)
    env.add_destination(dest, [f"{dest}-b", f"{dest}-p"], retry_frequency=1)
    [tid] = await env.put(dest, "first.bin", b"1" * 2000)
    [done] = await env.wait_for([tid], "DONE")
    assert (backup / "first.bin").read_bytes() == b"1" * 2000
    assert done.start_count == 1  # in one cycle: the primary first, then the backup
    handle = env.client.get_workflow_handle(transfer_workflow_id(dest, tid))
    await handle.result()  # the catalog says DONE before the workflow task is recorded
    assert "connection refused" in (await handle.fetch_history()).to_json()
    # With the primary up again, transfers go to it and the backup is left alone.
    env.update_host(f"{dest}-p", url=sshd.url(primary, user=user))
    [second] = await env.put(dest, "second.bin", b"2" * 2000)
    await env.wait_for([second], "DONE")
    assert (primary / "second.bin").exists() and not (backup / "second.bin").exists()

    only = env.name("bko")
    folder = sshd.folder(only)
    env.add_host(f"{only}-b", sshd.url(folder, user=user), kind="backup", **common)
    env.add_destination(only, [f"{only}-b"])
    [tid] = await env.put(only, "only.bin", b"o" * 500)
    await env.wait_for([tid], "DONE")
    assert (folder / "only.bin").read_bytes() == b"o" * 500
    assert (await env.view(only)).status != "NoHosts"


async def test_next_and_retry_goes_back_to_the_primary(dissemination: Dissemination, sshd) -> None:
    """`next_and_retry`: a transfer delivered by the second host; the next one starts on
    the primary again (and, it being still down, fails over once more)."""
    env = dissemination
    dest = env.name("nar")
    user, credentials = sftp_credentials(sshd)
    common = {"retry_count": 0, "retry_frequency": 1, "credentials": credentials}
    primary, second = sshd.folder(f"{dest}-p"), sshd.folder(f"{dest}-s")
    env.add_host(f"{dest}-p", down_url(sshd, primary, user), **common)
    env.add_host(f"{dest}-s", sshd.url(second, user=user), **common)
    env.add_destination(
        dest, [f"{dest}-p", f"{dest}-s"], max_connections=1, on_host_failure="next_and_retry"
    )
    [first] = await env.put(dest, "first.bin", b"1" * 1000)
    await env.wait_for([first], "DONE")
    assert (second / "first.bin").exists()
    view = await env.view(dest)
    assert view.host_index == 0  # not kept on the second host
    [again] = await env.put(dest, "again.bin", b"2" * 1000)
    await env.wait_for([again], "DONE")
    handle = env.client.get_workflow_handle(transfer_workflow_id(dest, again))
    history = (await handle.fetch_history()).to_json()
    assert "connection refused" in history  # it tried the primary first
    env.update_host(f"{dest}-p", url=sshd.url(primary, user=user))
    [third] = await env.put(dest, "third.bin", b"3" * 1000)
    await env.wait_for([third], "DONE")
    assert (primary / "third.bin").exists() and not (second / "third.bin").exists()
