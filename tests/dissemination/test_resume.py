"""Interrupts, requeues and progress of running transfers, through the REST API and the CLI."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from pathlib import Path

import httpx

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.models import DestinationUpdate

from .conftest import Dissemination
from .test_operations import Portal, portal  # noqa: F401 - the fixture

MiB = 1 << 20
RATE = 4 * MiB  # bytes/s: a 32 MiB file takes 8 s, less than the 12 s Temporal took to cancel


def _data(size: int) -> bytes:
    """Bytes that differ along the file, so that a wrong offset shows."""
    block = bytes(range(256)) * 4096  # 1 MiB
    return b"".join(bytes([i % 251]) + block[1:] for i in range(size // MiB))


def _partial(folder: Path, name: str) -> Path:
    return folder / f".{name}.ecpds-part"


async def _wait_sent(env: Dissemination, transfer: int, at_least: int) -> int:
    """Poll the catalog until the running transfer's progress shows `at_least` bytes."""
    for _ in range(300):
        [row] = env.transfers([transfer])
        assert row.status in ("WAIT", "EXEC"), (row.status, row.last_error)
        if row.bytes_sent >= at_least:
            return row.bytes_sent
        await asyncio.sleep(0.1)
    raise AssertionError(f"transfer {transfer} never showed {at_least} bytes sent: {row}")


async def test_progress_prompt_interrupt_and_requeue_resume(
    dissemination: Dissemination,
    portal: Portal,  # noqa: F811
) -> None:
    env = dissemination
    dest = env.name("resume")
    out = env.tmp / "out"
    env.add_host(f"{dest}-h", f"file://{out}", options={"max_rate": RATE})
    env.add_destination(dest, [f"{dest}-h"], max_connections=1)
    data = _data(32 * MiB)
    [tid] = await env.put(dest, "big", data)

    # Progress reaches the catalog, the REST JSON and `transfer show` while it runs.
    await _wait_sent(env, tid, 2 * MiB)
    admin = httpx.BasicAuth("admin", portal.password)
    async with httpx.AsyncClient(base_url=portal.url, auth=admin) as http:
        shown = (await http.get(f"/transfers/{tid}")).json()
    assert shown["status"] == "EXEC"
    assert 0 < shown["bytes_sent"] < shown["size"] == len(data)
    assert shown["rate"] > 0 and shown["eta"] > 0 and shown["progress_at"]
    code, output = await asyncio.to_thread(portal.cli, "transfer", "show", str(tid))
    assert code == 0 and "of 32.0 MiB" in output and "MiB/s" in output and "ETA" in output

    # An interrupt is noticed with the next heartbeat's answer, not seconds later: the
    # partial file holds little more than what had been sent when it was asked for.
    sent_then = (await _wait_sent(env, tid, 4 * MiB)) + RATE  # progress is 1 s old at most
    code, output = await asyncio.to_thread(portal.cli, "transfer", "interrupt", str(tid))
    assert code == 0, output
    [interrupted] = await env.wait_for([tid], "INTR")
    partial = _partial(out, "big")
    held = partial.stat().st_size
    assert held < len(data) and not (out / "big").exists()
    assert held <= sent_then + 5 * RATE, (held, sent_then)  # generous: 5 s more at full rate
    assert interrupted.bytes_sent == held  # the progress written when the send stopped

    # A requeue resumes the partial file like a retried attempt: what is already there is
    # kept (marked here, so that a restart from byte 0 would show), the rest is appended.
    with partial.open("r+b") as f:
        f.write(b"X" * MiB)
    code, output = await asyncio.to_thread(portal.cli, "transfer", "requeue", str(tid))
    assert code == 0, output
    [done] = await env.wait_for([tid], "DONE")
    delivered = (out / "big").read_bytes()
    assert delivered == b"X" * MiB + data[MiB:]
    assert not partial.exists()
    assert (done.requeue_count, done.start_count) == (1, 1)
    assert done.bytes_sent == len(data) and done.partial_target is None


async def test_requeue_elsewhere_removes_the_partial_file(
    dissemination: Dissemination,
    portal: Portal,  # noqa: F811
) -> None:
    env = dissemination
    dest = env.name("moved")
    first, second = env.tmp / "first", env.tmp / "second"
    env.add_host(f"{dest}-a", f"file://{first}", options={"max_rate": RATE})
    env.add_host(f"{dest}-b", f"file://{second}")
    env.add_destination(dest, [f"{dest}-a"], max_connections=1)
    data = _data(32 * MiB)
    [tid] = await env.put(dest, "moving", data)
    await _wait_sent(env, tid, 2 * MiB)
    code, output = await asyncio.to_thread(portal.cli, "transfer", "interrupt", str(tid))
    assert code == 0, output
    await env.wait_for([tid], "INTR")
    assert _partial(first, "moving").exists()

    # The destination now sends through another host: the transfer restarts from byte 0
    # there, and the partial file on the first host is removed.
    with session_scope(env.engine) as session:
        catalog.update_destination(session, name=dest, data=DestinationUpdate(hosts=[f"{dest}-b"]))
    code, output = await asyncio.to_thread(portal.cli, "scheduler", "restart", dest)
    assert code == 0, output
    code, output = await asyncio.to_thread(portal.cli, "transfer", "requeue", str(tid))
    assert code == 0, output
    await env.wait_for([tid], "DONE")
    assert (second / "moving").read_bytes() == data
    for _ in range(100):
        if not _partial(first, "moving").exists():
            break
        await asyncio.sleep(0.1)
    assert not _partial(first, "moving").exists()
    assert sorted(p.name for p in first.iterdir()) == []


async def test_requested_checksums_are_recorded_and_shown(
    dissemination: Dissemination,
    portal: Portal,  # noqa: F811
) -> None:
    env = dissemination
    dest = env.name("sums")
    out = env.tmp / "sums"
    env.add_host(f"{dest}-h", f"file://{out}", options={"checksums": ["sha256", "sha512"]})
    env.add_destination(dest, [f"{dest}-h"])
    data = b"checked " * 1000
    [tid] = await env.put(dest, "summed", data)
    [done] = await env.wait_for([tid], "DONE")
    assert done.sha256 == hashlib.sha256(data).hexdigest()
    assert done.sha512 == hashlib.sha512(data).hexdigest()
    admin = httpx.BasicAuth("admin", portal.password)
    async with httpx.AsyncClient(base_url=portal.url, auth=admin) as http:
        shown = (await http.get(f"/transfers/{tid}")).json()
    assert (shown["sha256"], shown["sha512"]) == (done.sha256, done.sha512)
    assert shown["size"] == shown["bytes_sent"] == len(data) and shown["eta"] is None
    code, output = await asyncio.to_thread(portal.cli, "transfer", "show", str(tid), "--json")
    assert code == 0 and json.loads(output)["sha256"] == done.sha256
    code, output = await asyncio.to_thread(portal.cli, "transfer", "show", str(tid))
    assert code == 0 and done.sha256[:16] in output

    # The destination's own `checksums` asks for them too, whatever its hosts say.
    other = env.name("sums512")
    env.add_host(f"{other}-h", f"file://{env.tmp / 'sums512'}")
    env.add_destination(other, [f"{other}-h"], checksums=["sha512"])
    [tid] = await env.put(other, "summed", data)
    [done] = await env.wait_for([tid], "DONE")
    assert (done.sha256, done.sha512) == (None, hashlib.sha512(data).hexdigest())


async def test_if_target_exists_overwrite_or_resume(dissemination: Dissemination) -> None:
    env = dissemination
    data = _data(3 * MiB)
    results = {}
    for choice in ("overwrite", "resume"):
        dest = env.name(choice)
        out = env.tmp / choice
        out.mkdir()
        # What an earlier delivery left: the file itself, and an upload cut short.
        (out / "f").write_bytes(b"old content")
        _partial(out, "f").write_bytes(b"X" * MiB)
        env.add_host(f"{dest}-h", f"file://{out}")
        env.add_destination(dest, [f"{dest}-h"], if_target_exists=choice)
        [tid] = await env.put(dest, "f", data)
        await env.wait_for([tid], "DONE")
        results[choice] = (out / "f").read_bytes()
        assert not _partial(out, "f").exists()
    assert results["overwrite"] == data  # sent whole from byte 0
    assert results["resume"] == b"X" * MiB + data[MiB:]  # the partial upload continued


async def test_destination_compression_follows_its_pattern_and_minimum_size(
    dissemination: Dissemination,
) -> None:
    """Only targets matching `compression_pattern` and at least `compression_min_size` big
    are compressed; the others go as they are (every file was compressed before)."""
    env = dissemination
    dest = env.name("squeeze")
    out = env.tmp / "squeeze"
    env.add_host(f"{dest}-h", f"file://{out}")
    env.add_destination(
        dest,
        [f"{dest}-h"],
        compression="gzip",
        compression_pattern=r"\.grib$",
        compression_min_size=1000,
    )
    big = b"field " * 1000
    cases = {"a.grib": big, "a.txt": big, "small.grib": b"tiny"}
    tids = {name: (await env.put(dest, name, data))[0] for name, data in cases.items()}
    await env.wait_for(list(tids.values()), "DONE")
    sent = {p.name: p.read_bytes() for p in out.iterdir()}
    assert gzip.decompress(sent["a.grib.gz"]) == big, sorted(sent)
    assert sent["a.txt"] == big and sent["small.grib"] == b"tiny", sorted(sent)
