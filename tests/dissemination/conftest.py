"""Dissemination fixtures: a worker on a fresh task queue, and helpers to set up destinations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from peers.catalog import CatalogEdits
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.client import Client

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.dispatch import TemporalDispatcher
from ecpds.core.engine import destination_workflow_id
from ecpds.core.ingest import ingest
from ecpds.core.models import (
    AliasCreate,
    DataTransfer,
    Destination,
)
from ecpds.core.notifications import Doors
from ecpds.core.push import PushOptions
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.store import Store, open_store
from ecpds.workers.worker import build_worker
from ecpds.workflows.destination import DestinationWorkflow


@dataclass
class Dissemination(CatalogEdits):
    """A running worker and what a test needs to drive it."""

    settings: Settings
    client: Client
    engine: Engine
    store: Store
    box: CredentialBox
    dispatcher: TemporalDispatcher
    tmp: Path

    def add_alias(self, name: str, source: str, target: str, **fields: Any) -> None:
        with session_scope(self.engine) as session:
            catalog.create_alias(
                session, data=AliasCreate(name=name, source=source, target=target, **fields)
            )

    async def put(self, destination: str, name: str, data: bytes, **options: Any) -> list[int]:
        async def chunks() -> AsyncIterator[bytes]:
            yield data

        result = await ingest(
            engine=self.engine,
            store=self.store,
            destination=destination,
            name=name,
            chunks=chunks(),
            options=PushOptions(**options),
            dispatcher=self.dispatcher,
            doors=Doors.of(self.settings),
        )
        return result.transfer_ids

    def transfers(self, ids: list[int]) -> list[DataTransfer]:
        with session_scope(self.engine) as session:
            return [t for i in ids if (t := session.get(DataTransfer, i)) is not None]

    def destination(self, name: str) -> Destination:
        with session_scope(self.engine) as session:
            found = session.exec(select(Destination).where(Destination.name == name)).first()
            assert found is not None
            return found

    async def wait_for(self, ids: list[int], *statuses: str, timeout: float = 60) -> list[Any]:
        """Poll the catalog until every transfer has one of `statuses`; fail after `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            rows = self.transfers(ids)
            if all(t.status in statuses for t in rows):
                return rows
            if asyncio.get_running_loop().time() > deadline:
                seen = {t.id: (t.status, t.last_error) for t in rows}
                pytest.fail(f"transfers never reached {statuses}: {seen}")
            await asyncio.sleep(0.2)

    async def wait_destination(self, name: str, check: Any, timeout: float = 60) -> Destination:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            dest = self.destination(name)
            if check(dest):
                return dest
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"destination {name} never got there: {dest.status} {dest.on_hold}")
            await asyncio.sleep(0.2)

    async def view(self, destination: str) -> Any:
        handle = self.client.get_workflow_handle(destination_workflow_id(destination))
        return await handle.query(DestinationWorkflow.view)

    async def wait_view(self, destination: str, check: Any, timeout: float = 60) -> Any:
        """Query the scheduler until `check(view)` holds: its state lags the catalog a little."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            view = await self.view(destination)
            if check(view):
                return view
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"scheduler of {destination} never got there: {view}")
            await asyncio.sleep(0.1)

    async def histories(self, workflow_id_prefix: str) -> str:
        """Every event of every workflow whose id starts with the prefix, as one JSON text."""
        texts = []
        async for execution in self.client.list_workflows(
            f"WorkflowId STARTS_WITH '{workflow_id_prefix}'"
        ):
            handle = self.client.get_workflow_handle(execution.id, run_id=execution.run_id)
            history = await handle.fetch_history()
            texts.append(history.to_json())
        return "\n".join(texts)


def worker_settings(tmp: Path, catalog_url: str, task_queue: str, temporal: str) -> Settings:
    return Settings(
        home=tmp / "var",
        database_url=catalog_url,
        store_locations=[str(tmp / "store")],
        task_queue=task_queue,
        temporal_address=temporal,
    )


async def without_worker(
    temporal_server: str, task_queue: str, tmp_path: Path, engine: Engine, catalog_url: str
) -> Dissemination:
    """Everything but the worker: for tests that run workers in other processes."""
    settings = worker_settings(tmp_path, catalog_url, task_queue, temporal_server)
    client = await Client.connect(temporal_server)
    return Dissemination(
        settings=settings,
        client=client,
        engine=engine,
        store=open_store(settings),
        box=CredentialBox(load_or_create_key(settings.key_file)),
        dispatcher=TemporalDispatcher(client, task_queue, engine),
        tmp=tmp_path,
    )


@pytest.fixture
async def dissemination_without_worker(
    temporal_server: str, task_queue: str, tmp_path: Path, engine: Engine, catalog_url: str
) -> Dissemination:
    return await without_worker(temporal_server, task_queue, tmp_path, engine, catalog_url)


@pytest.fixture
async def dissemination(
    dissemination_without_worker: Dissemination,
) -> AsyncIterator[Dissemination]:
    env = dissemination_without_worker
    async with build_worker(env.client, env.settings):
        yield env
