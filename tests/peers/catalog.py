"""What tests do to the catalog directly, through the catalog module, and waiting on it."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy
from sqlalchemy import Engine

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.models import DestinationCreate, DestinationUpdate, HostCreate, HostUpdate
from ecpds.core.secrets import CredentialBox

# A PostgreSQL server for the catalog tests, when set (they run on SQLite in any case).
PG_URL = os.environ.get("ECPDS_TEST_DATABASE_URL", "")


def fresh_pg_schema(url: str) -> str:
    """A PostgreSQL URL whose search_path is a new, empty schema."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


class CatalogEdits:
    """Hosts and destinations made and changed as an operator would; needs `engine`, `box`."""

    engine: Engine
    box: CredentialBox

    def name(self, prefix: str) -> str:
        """Names are global on the shared Temporal server: make them unique."""
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def add_host(self, name: str, url: str, **fields: Any) -> None:
        with session_scope(self.engine) as session:
            catalog.create_host(
                session, box=self.box, data=HostCreate(name=name, url=url, **fields)
            )

    def update_host(self, name: str, **fields: Any) -> None:
        with session_scope(self.engine) as session:
            catalog.update_host(session, box=self.box, name=name, data=HostUpdate(**fields))

    def delete_host(self, name: str) -> None:
        with session_scope(self.engine) as session:
            catalog.delete_host(session, name=name, force=True)

    def add_destination(self, name: str, hosts: list[str], **fields: Any) -> None:
        with session_scope(self.engine) as session:
            catalog.create_destination(
                session, data=DestinationCreate(name=name, hosts=hosts, **fields), box=self.box
            )

    def update_destination(self, name: str, **fields: Any) -> None:
        with session_scope(self.engine) as session:
            catalog.update_destination(
                session, name=name, data=DestinationUpdate(**fields), box=self.box
            )


def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll `check()` until it answers something true (a bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")
