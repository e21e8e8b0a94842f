"""Pushes while the Temporal server is down: answered as the successes they are, then
delivered once it is back, by the wake sweep (scheduled, or when a worker starts), with
no operator step; the portal reconnects by itself.

Each test runs its own Temporal dev server, killed and started again on the same port
with the same database file, a real worker (`run_worker`) and the real portal (`serve`).
"""

from __future__ import annotations

import asyncio
import subprocess
import tomllib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.client import Client

from ecpds.core.db import open_catalog, session_scope
from ecpds.core.devserver import dev_server_command, free_port, wait_for_port, wait_for_temporal
from ecpds.core.engine import wake_sweep_schedule_id
from ecpds.core.models import DataTransfer
from ecpds.core.settings import Settings
from ecpds.portal.server import serve
from ecpds.workers.schedules import ensure_schedules
from ecpds.workers.worker import run_worker

DELIVERED_WITHIN = 120  # seconds before a test gives up waiting (it fails, never hangs)


@dataclass
class RestartableTemporal:
    """A dev server that can be killed and started again where it was."""

    folder: Path
    port: int = field(default_factory=free_port)
    ui_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with (self.folder / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                dev_server_command(self.folder / "temporal.db", self.port, self.ui_port, ui=False),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_temporal(self.port, timeout=90, proc=self.proc)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def temporal(tmp_path: Path) -> Iterator[RestartableTemporal]:
    server = RestartableTemporal(tmp_path / "temporal")
    server.folder.mkdir()
    server.start()
    yield server
    server.kill()


@dataclass
class Running:
    """A background service (the worker or the portal) and the event that stops it."""

    task: asyncio.Task[None]
    stop: asyncio.Event

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 60)


@dataclass
class System:
    settings: Settings
    engine: Engine
    tmp: Path
    worker: Running | None = None
    portal: Running | None = None

    async def start_worker(self) -> None:
        stop = asyncio.Event()
        self.worker = Running(asyncio.create_task(run_worker(self.settings, stop)), stop)

    async def stop_worker(self) -> None:
        assert self.worker is not None
        await self.worker.close()
        self.worker = None

    async def start_portal(self) -> None:
        stop = asyncio.Event()
        self.portal = Running(asyncio.create_task(serve(self.settings, stop)), stop)
        for port in (self.settings.https_port, self.settings.ftp_port, self.settings.sftp_port):
            await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 60)

    async def stop_portal(self) -> None:
        assert self.portal is not None
        await self.portal.close()
        self.portal = None

    def client(self, prefix: str = "/api/v1") -> httpx.AsyncClient:
        admin = tomllib.loads(self.settings.admin_file.read_text())
        return httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{self.settings.https_port}{prefix}",
            auth=(admin["api_user"], admin["api_password"]),
            verify=False,
            timeout=60,
        )

    async def add_destination(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        async with self.client() as api:
            url = f"file://{self.tmp / 'sites' / name}"
            host = await api.post("/hosts", json={"name": f"{name}-h", "url": url})
            assert host.status_code == 201, host.text
            dest = await api.post("/destinations", json={"name": name, "hosts": [f"{name}-h"]})
            assert dest.status_code == 201, dest.text
        return name

    async def upload(self, destination: str, name: str, data: bytes, **params: Any) -> list[int]:
        """A REST upload; it must answer 201 with its transfers."""
        async with self.client() as api:
            answer = await api.post(
                f"/destinations/{destination}/files", params={"name": name, **params}, content=data
            )
        assert answer.status_code == 201, answer.text
        transfers: list[int] = answer.json()["transfers"]
        return transfers

    async def put(self, destination: str, name: str, data: bytes) -> str:
        """A /data/ upload; it must answer 201 with the data file id."""
        async with self.client("/data") as data_door:
            answer = await data_door.put(f"/{destination}/{name}", content=data)
        assert answer.status_code == 201, answer.text
        data_file_id: str = answer.json()["id"]
        return data_file_id

    def transfers_of(self, data_file_id: str) -> list[int]:
        with session_scope(self.engine) as session:
            ids = session.exec(
                select(DataTransfer.id).where(DataTransfer.data_file_id == data_file_id)
            ).all()
        return [i for i in ids if i is not None]

    async def delivered(self, ids: list[int]) -> None:
        """Wait until every transfer is DONE; fail (naming their statuses) if they never are."""
        deadline = asyncio.get_running_loop().time() + DELIVERED_WITHIN
        while True:
            with session_scope(self.engine) as session:
                rows = [session.get(DataTransfer, i) for i in ids]
                seen = {t.id: (t.status, t.last_error) for t in rows if t is not None}
            if len(seen) == len(ids) and all(status == "DONE" for status, _ in seen.values()):
                return
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"transfers never delivered: {seen}")
            await asyncio.sleep(0.3)

    def arrived(self, destination: str, name: str) -> bytes:
        return (self.tmp / "sites" / destination / name).read_bytes()


def make_system(tmp: Path, temporal: RestartableTemporal, *, sweep_every: int) -> System:
    settings = Settings(
        home=tmp / "var",
        task_queue=f"test-{uuid.uuid4().hex[:12]}",
        temporal_address=temporal.address,
        sweep_every=sweep_every,
        https_port=free_port(),
        s3_port=free_port(),
        ftp_port=free_port(),
        sftp_port=free_port(),
        mqtt_port=free_port(),
        mqtts_port=free_port(),
        mqtt_ws_port=free_port(),
    )
    settings.home.mkdir(parents=True)
    return System(settings, open_catalog(settings.catalog_url), tmp)


StartSystem = Callable[[int], Awaitable[System]]


@pytest.fixture
async def start_system(tmp_path: Path, temporal: RestartableTemporal) -> AsyncIterator[StartSystem]:
    """Start a worker and a portal (sweeping every so many seconds); stopped at the end."""
    made: list[System] = []

    async def start(sweep_every: int) -> System:
        system = make_system(tmp_path, temporal, sweep_every=sweep_every)
        made.append(system)
        await system.start_worker()
        await system.start_portal()
        return system

    yield start
    for system in made:
        if system.portal is not None:
            await system.stop_portal()
        if system.worker is not None:
            await system.stop_worker()
        system.engine.dispose()


async def an_idle_destination(system: System) -> str:
    """A destination whose scheduler has delivered a file and now waits for a signal."""
    idle = await system.add_destination("idle")
    await system.delivered(await system.upload(idle, "first.grib", b"before the outage"))
    return idle


async def test_pushes_while_temporal_is_down_are_delivered_by_the_scheduled_sweep(
    temporal: RestartableTemporal, start_system: StartSystem
) -> None:
    system = await start_system(2)
    idle = await an_idle_destination(system)
    new = await system.add_destination("new")

    temporal.kill()
    ids = await system.upload(idle, "rest-idle.grib", b"rest to idle")
    ids += await system.upload(new, "rest-new.grib", b"rest to new")
    ids += system.transfers_of(await system.put(idle, "data-idle.grib", b"data to idle"))
    ids += system.transfers_of(await system.put(new, "data-new.grib", b"data to new"))
    assert len(ids) == 4
    temporal.start()

    # The worker and the portal ran through the outage; nobody touches them.
    await system.delivered(ids)
    assert system.arrived(idle, "rest-idle.grib") == b"rest to idle"
    assert system.arrived(new, "data-new.grib") == b"data to new"


async def test_a_worker_starting_after_the_outage_sends_what_waits(
    tmp_path: Path, temporal: RestartableTemporal, start_system: StartSystem
) -> None:
    system = await start_system(3600)
    idle = await an_idle_destination(system)
    new = await system.add_destination("new")
    source = tmp_path / "hpc" / "t2m.grib"
    source.parent.mkdir()
    source.write_bytes(b"fetched after the outage")
    await system.stop_worker()
    await system.stop_portal()

    temporal.kill()
    await system.start_portal()  # Temporal is down as the portal starts
    ids = await system.upload(idle, "rest-idle.grib", b"rest to idle")
    ids += system.transfers_of(await system.put(new, "data-new.grib", b"data to new"))
    async with system.client() as api:
        registered = await api.post(
            f"/destinations/{new}/sources", json={"sources": [{"url": f"file://{source}"}]}
        )
        assert registered.status_code == 201, registered.text
        ids += registered.json()["files"][0]["transfers"]
        refused = await api.post(f"/transfers/{ids[0]}/operations/schedule-now")
        assert refused.status_code == 503
        assert list(refused.json()) == ["detail"]
        assert "\n" not in refused.json()["detail"]
    temporal.start()
    await system.start_worker()

    await system.delivered(ids)
    assert system.arrived(new, "t2m.grib") == b"fetched after the outage"
    async with system.client() as api:
        # The same portal, never restarted, reaches Temporal again.
        again = await api.post(f"/destinations/{idle}/operations/restart")
        assert again.status_code == 202, again.text


async def test_a_reqid_sent_again_after_the_outage_ends_delivered(
    temporal: RestartableTemporal, start_system: StartSystem
) -> None:
    system = await start_system(3600)
    idle = await an_idle_destination(system)

    temporal.kill()
    first = await system.upload(idle, "again.grib", b"sent twice", reqid="outage-1")
    temporal.start()

    # The scheduled sweep may be an hour away: the resent request wakes the destination.
    second = await system.upload(idle, "again.grib", b"sent twice", reqid="outage-1")
    assert second == first
    await system.delivered(first)
    assert system.arrived(idle, "again.grib") == b"sent twice"


async def test_the_wake_sweep_follows_its_interval_setting(
    temporal_server: str, tmp_path: Path
) -> None:
    client = await Client.connect(temporal_server)
    settings = Settings(home=tmp_path / "var", task_queue=f"test-{uuid.uuid4().hex[:12]}")
    created = await ensure_schedules(client, settings.model_copy(update={"sweep_every": 60}))
    assert wake_sweep_schedule_id(settings.task_queue) in created
    await ensure_schedules(client, settings.model_copy(update={"sweep_every": 120}))
    handle = client.get_schedule_handle(wake_sweep_schedule_id(settings.task_queue))
    described = await handle.describe()
    assert [i.every for i in described.schedule.spec.intervals] == [timedelta(seconds=120)]
    for schedule_id in created:
        await client.get_schedule_handle(schedule_id).delete()
