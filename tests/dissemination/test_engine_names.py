"""The engine's names on a real server: a transfer is found by every search attribute the
dev server registers (the keys of core/engine.py), under its registered type and id.
"""

from __future__ import annotations

import asyncio

import pytest

from ecpds.core.engine import (
    DATA_FILE_ID,
    DESTINATION,
    DESTINATION_WORKFLOW,
    PRIORITY,
    SEARCH_ATTRIBUTES,
    TRANSFER_STATUS,
    TRANSFER_WORKFLOW,
    destination_workflow_id,
    transfer_workflow_id,
)

from .conftest import Dissemination


async def test_a_transfer_is_found_by_every_search_attribute(dissemination: Dissemination) -> None:
    env = dissemination
    dest = env.name("named")
    env.add_host(f"{dest}-h", f"file://{env.tmp / dest}", retry_count=0, retry_frequency=1)
    env.add_destination(dest, [f"{dest}-h"])
    [tid] = await env.put(dest, "z500.grib", b"geopotential", priority=42)
    [done] = await env.wait_for([tid], "DONE")

    values = {
        DESTINATION: dest,
        DATA_FILE_ID: done.data_file_id,
        TRANSFER_STATUS: "DONE",
        PRIORITY: 42,
    }
    assert set(values) == set(SEARCH_ATTRIBUTES)
    query = " AND ".join(
        f"{key.name} = {value}" if isinstance(value, int) else f"{key.name} = '{value}'"
        for key, value in values.items()
    )
    # Visibility lags the workflow's end a little: ask until the server's index has it.
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        found = [w async for w in env.client.list_workflows(query)]
        if found or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    if not found:
        pytest.fail(f"no workflow answers {query}")
    assert [(w.id, w.workflow_type) for w in found] == [
        (transfer_workflow_id(dest, tid), TRANSFER_WORKFLOW)
    ]
    scheduler = await env.client.get_workflow_handle(destination_workflow_id(dest)).describe()
    assert scheduler.workflow_type == DESTINATION_WORKFLOW
