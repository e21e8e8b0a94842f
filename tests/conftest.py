"""Shared fixtures: a real Temporal dev server, catalogs on SQLite and PostgreSQL, a store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers.catalog import PG_URL, fresh_pg_schema
from peers.temporal import running_dev_server
from sqlalchemy import Engine

from ecpds.core.db import open_catalog
from ecpds.core.devserver import dev_server_command, free_port
from ecpds.core.settings import Settings
from ecpds.core.store import Store

pytest_plugins = [
    "peers.sshd",
    "peers.ftp",
    "peers.vsftpd",
    "peers.httpd",
    "peers.s3",
    "peers.azure",
    "peers.gcs",
    "peers.mqtt",
]


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Temporal dev server for the whole session; yields its host:port."""
    folder = tmp_path_factory.mktemp("temporal")
    port, ui_port = free_port(), free_port()
    command = dev_server_command(folder / "temporal.db", port, ui_port, ui=False)
    with running_dev_server(folder, command, port) as address:
        yield address


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def _catalog_params() -> list:
    params = [pytest.param("sqlite", id="sqlite")]
    if PG_URL:
        params.append(pytest.param("postgresql", id="postgresql"))
    return params


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "one_catalog: a slow failure drill run on one catalog, PostgreSQL when it is"
        " configured (SQLite otherwise); the faster tests cover both catalogs",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With PostgreSQL configured, `one_catalog` tests drop their SQLite run (reported
    as deselected in the summary, never skipped silently)."""
    if not PG_URL:
        return
    dropped = [
        item
        for item in items
        if item.get_closest_marker("one_catalog")
        and getattr(item, "callspec", None) is not None
        and item.callspec.params.get("catalog_url") == "sqlite"
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


@pytest.fixture(params=_catalog_params())
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh catalog URL: SQLite always, PostgreSQL when ECPDS_TEST_DATABASE_URL is set."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return fresh_pg_schema(PG_URL)


@pytest.fixture
def engine(catalog_url: str) -> Iterator[Engine]:
    engine = open_catalog(catalog_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path, catalog_url: str) -> Settings:
    home = tmp_path / "var"
    return Settings(home=home, database_url=catalog_url)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store([str(tmp_path / "store")])
