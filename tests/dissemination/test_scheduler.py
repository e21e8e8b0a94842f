"""The destination scheduler on a real Temporal server, delivering to local folders."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from ecpds.core.engine import Operation

from .conftest import Dissemination


def folder_host(env: Dissemination, name: str) -> Path:
    folder = env.tmp / name
    env.add_host(name, f"file://{folder}", retry_count=0, retry_frequency=1)
    return folder


def started_order(env: Dissemination, ids: list[int]) -> list[int]:
    rows = env.transfers(ids)
    return [t.id for t in sorted(rows, key=lambda t: t.started)]  # type: ignore[misc]


async def test_delivers_with_template_and_records_status(dissemination: Dissemination) -> None:
    env = dissemination
    dest = env.name("plain")
    out = folder_host(env, f"{dest}-h")
    env.add_destination(dest, [f"{dest}-h"], target_template="{destination}/{date:%Y}/{target}")
    data = b"grib" * 5000
    ids = await env.put(dest, "a.grib", data)
    [done] = await env.wait_for(ids, "DONE")
    delivered = list(out.rglob("a.grib"))
    assert len(delivered) == 1 and delivered[0].read_bytes() == data
    assert delivered[0].parent.parent.name == dest
    assert done.bytes_sent == len(data) and done.size_sent == len(data)
    assert done.start_count == 1 and done.host_id is not None and done.last_error is None
    # Queueing the same transfer again does not send it twice.
    await env.dispatcher.queue(ids)
    await env.dispatcher.queue(ids)
    assert env.transfers(ids)[0].start_count == 1
    assert hashlib.md5(delivered[0].read_bytes()).hexdigest() == hashlib.md5(data).hexdigest()


async def test_priority_order_under_max_connections(dissemination: Dissemination) -> None:
    env = dissemination
    dest = env.name("prio")
    folder_host(env, f"{dest}-h")
    env.add_destination(dest, [f"{dest}-h"], max_connections=1)
    await env.dispatcher.operate_destination(dest, Operation.HOLD)
    await env.wait_destination(dest, lambda d: d.on_hold)
    ids = []
    for i, priority in enumerate([50, 10, 99, 10, 0]):
        ids += await env.put(dest, f"f{i}", b"x" * 1000, priority=priority)
    # The scheduler reads its window from the catalog after each wake-up signal.
    view = await env.wait_view(dest, lambda view: len(view.queued) == 5)
    assert view.queued == [ids[4], ids[1], ids[3], ids[0], ids[2]] and view.running == []
    assert view.waiting == 5
    assert all(t.status == "WAIT" for t in env.transfers(ids))
    await env.dispatcher.operate_destination(dest, Operation.RESTART)
    await env.wait_for(ids, "DONE")
    assert started_order(env, ids) == [ids[4], ids[1], ids[3], ids[0], ids[2]]
    assert not env.destination(dest).on_hold


async def test_requeue_and_priority_change_on_waiting_transfers(
    dissemination: Dissemination,
) -> None:
    env = dissemination
    dest = env.name("ops")
    folder_host(env, f"{dest}-h")
    env.add_destination(dest, [f"{dest}-h"], max_connections=1)
    await env.dispatcher.operate_destination(dest, Operation.HOLD)
    a, b, c = [(await env.put(dest, name, b"y" * 100, priority=50))[0] for name in "abc"]
    await env.dispatcher.operate_transfer(a, Operation.REQUEUE)
    await env.dispatcher.operate_transfer(c, Operation.PRIORITY, value=0)
    await env.dispatcher.operate_transfer(b, Operation.STOP)
    await env.wait_for([b], "STOP")
    assert [t.priority for t in env.transfers([c])] == [0]
    await env.dispatcher.operate_destination(dest, Operation.RESTART)
    await env.wait_for([a, c], "DONE")
    assert started_order(env, [a, c]) == [c, a]
    # A finished transfer can be sent again.
    await env.dispatcher.operate_transfer(a, Operation.REQUEUE)
    await env.wait_for([a], "DONE")
    assert env.transfers([a])[0].start_count == 1


async def test_scheduled_and_expired_transfers(dissemination: Dissemination) -> None:
    env = dissemination
    dest = env.name("sched")
    out = folder_host(env, f"{dest}-h")
    env.add_destination(dest, [f"{dest}-h"])
    await env.dispatcher.operate_destination(dest, Operation.HOLD)
    [later] = await env.put(dest, "later", b"z", delay=3600)
    [short] = await env.put(dest, "short", b"z", lifetime=1)
    assert [t.status for t in env.transfers([later, short])] == ["SCHE", "WAIT"]
    await env.dispatcher.operate_transfer(later, Operation.SCHEDULE_NOW)
    await asyncio.sleep(1.5)  # "short" expires while the destination is on hold
    await env.dispatcher.operate_destination(dest, Operation.RESTART)
    await env.wait_for([later], "DONE")
    [expired] = await env.wait_for([short], "STOP")
    assert expired.last_error and "expired" in expired.last_error
    assert (out / "later").exists() and not (out / "short").exists()


async def test_aliases_and_conditional_alias(dissemination: Dissemination) -> None:
    env = dissemination
    src, copy, grib = env.name("src"), env.name("copy"), env.name("grib")
    outs = {d: folder_host(env, f"{d}-h") for d in (src, copy, grib)}
    for d in (src, copy, grib):
        env.add_destination(d, [f"{d}-h"])
    env.add_alias(f"{src}-all", src, copy)
    env.add_alias(f"{src}-grib", src, grib, pattern=r"^(.*)\.grib$", rewrite=r"\1.grb")
    text_ids = await env.put(src, "notes.txt", b"notes")
    grib_ids = await env.put(src, "field.grib", b"field")
    assert len(text_ids) == 2 and len(grib_ids) == 3
    await env.wait_for(text_ids + grib_ids, "DONE")
    assert sorted(p.name for p in outs[src].iterdir()) == ["field.grib", "notes.txt"]
    assert sorted(p.name for p in outs[copy].iterdir()) == ["field.grib", "notes.txt"]
    assert sorted(p.name for p in outs[grib].iterdir()) == ["field.grb"]
