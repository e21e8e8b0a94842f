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
from ecpds.core.secrets import CredentialBox, StoreCredentials, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.store import Store, open_store


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
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[System]:
    bucket = s3_server.bucket()
    s3_url = f"s3://{bucket}/store"
    port = free_port()
    # The S3 location takes its endpoint from store_options and its keys from the sealed
    # credentials file, as in production; nothing comes from fsspec's configuration.
    without_fsspec_config(monkeypatch)
    settings = Settings(
        home=tmp_path / "var",
        database_url=catalog_url,
        store_locations=[str(tmp_path / "a"), str(tmp_path / "b"), s3_url],
        store_options={s3_url: s3_options(s3_server)},
        task_queue=task_queue,
        temporal_address=temporal_server,
        api_url=f"http://127.0.0.1:{port}/api/v1",
    )
    box = CredentialBox(load_or_create_key(settings.key_file))
    StoreCredentials(settings.store_secrets_file, box).set(s3_url, s3_keys(s3_server))
    with api_and_worker(settings, engine, port) as (client, loop, env):
        yield System(
            settings=settings,
            env=env,
            engine=engine,
            store=open_store(settings),
            box=box,
            client=client,
            loop=loop,
            tmp=tmp_path,
        )


def without_fsspec_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """No store option from fsspec's configuration (FSSPEC_* variables or its conf)."""
    for name in [n for n in os.environ if n.startswith("FSSPEC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(fsspec.config, "conf", {})


def s3_options(s3_server: Any) -> dict[str, Any]:
    """The non-secret fsspec options of a store location on `s3_server`."""
    return {
        "client_kwargs": {"endpoint_url": s3_server.endpoint, "region_name": s3_server.region},
        "skip_instance_cache": True,
    }


def s3_keys(s3_server: Any) -> dict[str, str]:
    return {"key": s3_server.access_key_id, "secret": s3_server.secret_access_key}


def environ_with(env: dict[str, str]) -> dict[str, str]:
    return dict(os.environ) | env
