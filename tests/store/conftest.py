"""A running system for the store tests: REST API (uvicorn) and a worker on a real Temporal
server, in a thread of their own, with three store locations (two folders and S3)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec.config
import pytest
from peers.catalog import until
from peers.loop import LoopThread
from peers.system import api_and_worker
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.client import Client
from typer.testing import CliRunner, Result

from ecpds.cli.main import app as cli_app
from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.devserver import free_port
from ecpds.core.models import DataFile, DestinationCreate, HostCreate
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.store import Store


@dataclass
class System:
    settings: Settings
    env: dict[str, str]
    engine: Engine
    store: Store  # the same locations as the portal's and the worker's
    box: CredentialBox
    client: Client
    loop: LoopThread
    tmp: Path

    def cli(self, *args: str, input: str | bytes | None = None, **env: str) -> Result:
        return CliRunner().invoke(cli_app, list(args), env=self.env | env, input=input)

    def destination(self, name: str, **fields: Any) -> None:
        with session_scope(self.engine) as session:
            catalog.create_destination(session, data=DestinationCreate(name=name, **fields))

    def host(self, name: str, url: str, **fields: Any) -> None:
        with session_scope(self.engine) as session:
            catalog.create_host(
                session, box=self.box, data=HostCreate(name=name, url=url, **fields)
            )

    def data_file(self, id: str) -> DataFile:
        with Session(self.engine) as session:
            data_file = session.get(DataFile, id)
            assert data_file is not None
            return data_file

    def files_named(self, name: str) -> list[DataFile]:
        with Session(self.engine) as session:
            return list(session.exec(select(DataFile).where(DataFile.name == name)).all())

    def until(self, check: Any, what: str, timeout: float = 120) -> Any:
        return until(check, what, timeout)


@pytest.fixture
def system(
    temporal_server: str,
    task_queue: str,
    tmp_path: Path,
    engine: Engine,
    catalog_url: str,
    s3_server: Any,
) -> Iterator[System]:
    bucket = s3_server.bucket()
    # S3 locations take their endpoint and keys from fsspec's configuration, as in
    # production (FSSPEC_S3_* environment variables); here it is set in-process.
    fsspec.config.conf["s3"] = {
        "key": s3_server.access_key_id,
        "secret": s3_server.secret_access_key,
        "client_kwargs": {"endpoint_url": s3_server.endpoint, "region_name": s3_server.region},
    }
    port = free_port()
    settings = Settings(
        home=tmp_path / "var",
        database_url=catalog_url,
        store_locations=[str(tmp_path / "a"), str(tmp_path / "b"), f"s3://{bucket}/store"],
        task_queue=task_queue,
        temporal_address=temporal_server,
        api_url=f"http://127.0.0.1:{port}/api/v1",
    )
    try:
        with api_and_worker(settings, engine, port) as (client, loop, env):
            yield System(
                settings=settings,
                env=env,
                engine=engine,
                store=Store(settings.store_urls),
                box=CredentialBox(load_or_create_key(settings.key_file)),
                client=client,
                loop=loop,
                tmp=tmp_path,
            )
    finally:
        fsspec.config.conf.pop("s3", None)


def environ_with(env: dict[str, str]) -> dict[str, str]:
    return dict(os.environ) | env
