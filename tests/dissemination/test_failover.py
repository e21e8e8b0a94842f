"""Fail-over, hold and resume against a real OpenSSH server and a real Temporal server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType

from ecpds.core.devserver import free_port
from ecpds.core.engine import Operation, destination_workflow_id, transfer_workflow_id
from ecpds.workers.worker import build_worker

from .conftest import Dissemination


def sftp_credentials(sshd) -> tuple[str | None, dict[str, str]]:
    """The password user and password when the tests run as root, else the key user."""
    if sshd.password_user:
        return sshd.password_user, {"password": sshd.password}
    return None, {"private_key": sshd.private_key}


def down_url(sshd, folder: Path, user: str | None) -> str:
    """An SFTP URL on a port where nothing listens: a host that is down."""
    return sshd.url(folder, user=user).replace(f":{sshd.port}/", f":{free_port()}/")


async def transmit_results(env: Dissemination, destination: str, transfer_id: int) -> list[dict]:
    """What the transmit activities (regular or local) of a transfer returned."""
    handle = env.client.get_workflow_handle(transfer_workflow_id(destination, transfer_id))
    history = await handle.fetch_history()
    results = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            payloads = event.activity_task_completed_event_attributes.result.payloads
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = event.marker_recorded_event_attributes
            if "result" not in marker.details:
                continue  # a patch marker
            payloads = marker.details["result"].payloads
        else:
            continue
        results.append(json.loads(payloads[0].data))
    return results


def assert_no_secrets(text: str, sshd) -> None:
    key_line = sshd.private_key.splitlines()[1]
    assert key_line not in text
    assert sshd.password not in text
    assert "BEGIN OPENSSH PRIVATE KEY" not in text


async def test_failover_to_backup_and_back_to_primary(dissemination: Dissemination, sshd) -> None:
    env = dissemination
    dest = env.name("fo")
    user, credentials = sftp_credentials(sshd)
    primary_dir, backup_dir = sshd.folder(f"{dest}-p"), sshd.folder(f"{dest}-b")
    common = {"retry_count": 0, "retry_frequency": 1, "credentials": credentials}
    env.add_host(f"{dest}-p", down_url(sshd, primary_dir, user), **common)
    env.add_host(f"{dest}-b", sshd.url(backup_dir, user=user), **common)
    env.add_destination(
        dest,
        [f"{dest}-p", f"{dest}-b"],
        max_connections=1,
        on_host_failure="next_and_stay",
        reset_frequency=3,
        retry_frequency=1,
    )
    [first] = await env.put(dest, "first.bin", b"1" * 70000)
    [done] = await env.wait_for([first], "DONE")
    assert (backup_dir / "first.bin").read_bytes() == b"1" * 70000
    await env.wait_view(dest, lambda view: view.host_index == 1)
    # "next and stay": the next transfer starts on the backup host straight away.
    [second] = await env.put(dest, "second.bin", b"2" * 1000)
    await env.wait_for([second], "DONE")
    assert (backup_dir / "second.bin").exists()
    assert len(await transmit_results(env, dest, second)) == 1
    # The primary comes back; after the reset frequency transfers return to it.
    env.update_host(f"{dest}-p", url=sshd.url(primary_dir, user=user))
    await asyncio.sleep(3.5)
    [third] = await env.put(dest, "third.bin", b"3" * 1000)
    [back] = await env.wait_for([third], "DONE")
    assert (primary_dir / "third.bin").read_bytes() == b"3" * 1000
    assert back.host_id != done.host_id
    await env.wait_view(dest, lambda view: view.host_index == 0)
    assert_no_secrets(await env.histories(f"transfer-{dest}-"), sshd)
    assert_no_secrets(await env.histories(destination_workflow_id(dest)), sshd)


async def test_hold_after_retry_count_then_restart(dissemination: Dissemination, sshd) -> None:
    env = dissemination
    dest = env.name("hold")
    user, credentials = sftp_credentials(sshd)
    folder = sshd.folder(dest)
    env.add_host(
        f"{dest}-h",
        down_url(sshd, folder, user),
        retry_count=1,
        retry_frequency=1,
        credentials=credentials,
    )
    env.add_destination(dest, [f"{dest}-h"], retry_count=1, retry_frequency=1, max_start=10)
    [tid] = await env.put(dest, "held.bin", b"h" * 5000)
    held = await env.wait_destination(dest, lambda d: d.on_hold)
    assert held.status == "Failed"
    [waiting] = env.transfers([tid])
    assert waiting.status == "WAIT" and waiting.last_error and f"{dest}-h" in waiting.last_error
    assert waiting.start_count == 2
    env.update_host(f"{dest}-h", url=sshd.url(folder, user=user))
    await env.dispatcher.operate_destination(dest, Operation.RESTART)
    await env.wait_for([tid], "DONE")
    assert (folder / "held.bin").read_bytes() == b"h" * 5000
    assert not env.destination(dest).on_hold
    assert_no_secrets(await env.histories(f"transfer-{dest}-"), sshd)


def worker_environment(env: Dissemination) -> dict[str, str]:
    settings = env.settings
    return dict(
        os.environ,
        ECPDS_HOME=str(settings.home),
        ECPDS_DATABASE_URL=settings.catalog_url,
        ECPDS_STORE_LOCATIONS=json.dumps(settings.store_urls),
        ECPDS_TASK_QUEUE=settings.task_queue,
        ECPDS_TEMPORAL_ADDRESS=settings.temporal_target,
    )


def start_worker_process(env: Dissemination) -> subprocess.Popen:
    code = (
        "import asyncio\n"
        "from ecpds.core.settings import Settings\n"
        "from ecpds.workers.worker import run_worker\n"
        "asyncio.run(run_worker(Settings()))\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], env=worker_environment(env))


@pytest.mark.one_catalog
async def test_worker_killed_mid_transfer_resumes(
    dissemination_without_worker: Dissemination, sshd
) -> None:
    env = dissemination_without_worker
    dest = env.name("kill")
    user, credentials = sftp_credentials(sshd)
    folder = sshd.folder(dest)
    env.add_host(
        f"{dest}-h",
        sshd.url(folder, user=user),
        retry_count=3,
        retry_frequency=1,
        credentials=credentials,
        options={"max_rate": 16 << 20},
    )
    env.add_destination(dest, [f"{dest}-h"])
    data = os.urandom(64 << 20)
    worker = start_worker_process(env)
    try:
        [tid] = await env.put(dest, "large.bin", data, priority=5)
        deadline = asyncio.get_running_loop().time() + 60
        while not any(p.stat().st_size >= 16 << 20 for p in folder.iterdir()):
            assert asyncio.get_running_loop().time() < deadline, "the upload never started"
            assert worker.poll() is None, "the worker process died"
            await asyncio.sleep(0.1)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert env.transfers([tid])[0].status == "EXEC"
    assert not (folder / "large.bin").exists()
    async with build_worker(env.client, env.settings):
        [done] = await env.wait_for([tid], "DONE", timeout=120)
    delivered = (folder / "large.bin").read_bytes()
    assert hashlib.md5(delivered).hexdigest() == hashlib.md5(data).hexdigest()
    assert done.size_sent == len(data)
    [result] = await transmit_results(env, dest, tid)
    assert result["resumed_from"] >= 16 << 20
    assert result["md5"] == hashlib.md5(data).hexdigest()
    # The transmit activity carried the task priority (0-19 -> key 1) and fairness key.
    handle = env.client.get_workflow_handle(transfer_workflow_id(dest, tid))
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in (await handle.fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert scheduled[0].priority.priority_key == 1
    assert scheduled[0].priority.fairness_key == dest
