"""Acquisition fixtures: a worker on a fresh task queue over a real Temporal server and
catalog, with helpers to declare acquisition hosts and run discoveries."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from peers.catalog import CatalogEdits, until
from peers.loop import LoopThread
from peers.system import api_and_worker
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio.client import Client, ScheduleDescription
from temporalio.service import RPCError, RPCStatusCode
from typer.testing import CliRunner, Result

from ecpds.activities.discovery import FinishRunOutput
from ecpds.cli.main import app as cli_app
from ecpds.core import acquisition
from ecpds.core.devserver import free_port
from ecpds.core.engine import (
    DISCOVERY_WORKFLOW,
    DiscoveryInput,
    discovery_workflow_id,
    workflow_queue,
)
from ecpds.core.models import (
    AcquisitionRun,
    DataFile,
    DataTransfer,
    Destination,
)
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.store import Store, open_store
from ecpds.workers.worker import build_worker
from ecpds.workflows.discovery import DiscoveryWorkflow

OLD = time.time() - 3600  # a file time old enough to be settled at first sight


def write(path: Path, data: bytes, *, mtime: float | None = OLD) -> Path:
    """A provider's file; old by default (settled), or with the time given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@dataclass
class Acquisition(CatalogEdits):
    settings: Settings
    client: Client
    engine: Engine
    store: Store
    box: CredentialBox
    tmp: Path

    def acquisition_host(
        self, url: str, rules: list[dict[str, Any]], *, forward: list[str] = (), **fields: Any
    ) -> tuple[str, str]:
        """An acquisition host with the rules, in a new destination; (destination, host)."""
        host = self.name("provider")
        self.add_host(
            host, url, kind="acquisition", acquisition={"rules": rules, "every": 3600}, **fields
        )
        destination = self.name("acq")
        self.add_destination(destination, [host, *forward])
        return destination, host

    async def run(self, destination: str, host: str) -> FinishRunOutput:
        """One discovery run, as its schedule would start it; its outcome."""
        return await self.client.execute_workflow(
            DiscoveryWorkflow.run,
            DiscoveryInput(destination, host),
            id=f"{discovery_workflow_id(destination, host)}-{uuid.uuid4().hex[:6]}",
            task_queue=workflow_queue(self.settings.task_queue, DISCOVERY_WORKFLOW),
        )

    def dry_run(self, host: str) -> acquisition.DryRun:
        return acquisition.dry_run(self.engine, self.box, host=host)

    def files(self, destination: str) -> dict[str, DataFile]:
        """The destination's data files by target: the latest one of a target fetched again."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(DataTransfer.target, DataFile)
                .join(DataFile, col(DataFile.id) == col(DataTransfer.data_file_id))
                .join(Destination, col(Destination.id) == col(DataTransfer.destination_id))
                .where(Destination.name == destination)
                .order_by(col(DataTransfer.id))  # no order is no order: PostgreSQL's plan picks
            ).all()
        return {target: f for target, f in rows}

    def transfers(self, destination: str) -> list[DataTransfer]:
        with Session(self.engine) as session:
            return list(
                session.exec(
                    select(DataTransfer)
                    .join(Destination, col(Destination.id) == col(DataTransfer.destination_id))
                    .where(Destination.name == destination)
                ).all()
            )

    def stored(self, data_file: DataFile) -> bytes:
        with self.store.open(data_file.id) as f:
            return f.read()

    def runs(self, host: str) -> list[AcquisitionRun]:
        with Session(self.engine) as session:
            return list(reversed(acquisition.list_runs(session, host=host)))

    async def histories(self, workflow_id_prefix: str) -> str:
        texts = []
        async for execution in self.client.list_workflows(
            f"WorkflowId STARTS_WITH '{workflow_id_prefix}'"
        ):
            handle = self.client.get_workflow_handle(execution.id, run_id=execution.run_id)
            texts.append((await handle.fetch_history()).to_json())
        return "\n".join(texts)

    async def wait_for(self, check: Any, what: str, timeout: float = 60) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = check()
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"never happened: {what}")
            await asyncio.sleep(0.2)


@pytest.fixture
async def acq(
    temporal_server: str, task_queue: str, tmp_path: Path, engine: Engine, catalog_url: str
) -> AsyncIterator[Acquisition]:
    settings = Settings(
        home=tmp_path / "var",
        database_url=catalog_url,
        store_locations=[str(tmp_path / "store")],
        task_queue=task_queue,
        temporal_address=temporal_server,
    )
    client = await Client.connect(temporal_server)
    env = Acquisition(
        settings=settings,
        client=client,
        engine=engine,
        store=open_store(settings),
        box=CredentialBox(load_or_create_key(settings.key_file)),
        tmp=tmp_path,
    )
    async with build_worker(client, settings):
        yield env


@dataclass
class System:
    """The REST API (uvicorn) and a worker in a thread of their own, and the CLI to drive them."""

    settings: Settings
    env: dict[str, str]
    engine: Engine
    client: Client
    loop: LoopThread
    tmp: Path

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(cli_app, list(args), env=self.env)

    def schedule(self, schedule_id: str) -> ScheduleDescription | None:
        async def describe() -> ScheduleDescription | None:
            try:
                return await self.client.get_schedule_handle(schedule_id).describe()
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    return None
                raise

        return self.loop.run(describe())

    def until(self, check: Any, what: str, timeout: float = 60) -> Any:
        return until(check, what, timeout)


@pytest.fixture
def system(
    temporal_server: str, task_queue: str, tmp_path: Path, engine: Engine, catalog_url: str
) -> Iterator[System]:
    port = free_port()
    settings = Settings(
        home=tmp_path / "var",
        database_url=catalog_url,
        store_locations=[str(tmp_path / "store")],
        task_queue=task_queue,
        temporal_address=temporal_server,
        api_url=f"http://127.0.0.1:{port}/api/v1",
    )
    with api_and_worker(settings, engine, port) as (client, loop, env):
        yield System(
            settings=settings, env=env, engine=engine, client=client, loop=loop, tmp=tmp_path
        )
