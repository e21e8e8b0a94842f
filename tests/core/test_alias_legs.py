"""A push's alias legs take the alias's priority, lifetime and delay, under the push's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.ingest import ingest
from ecpds.core.models import (
    AliasCreate,
    DataTransfer,
    DestinationCreate,
    HostCreate,
    TransferStatus,
)
from ecpds.core.push import IngestError, PushOptions
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.store import Store


@pytest.fixture
def site(engine: Engine, tmp_path: Path) -> None:
    """src (priority 50, lifetime 1 h) aliased to fast (priority 5, 10 min) and late (+5 min)."""
    box = CredentialBox(load_or_create_key(tmp_path / "secret.key"))
    with session_scope(engine) as session:
        catalog.create_host(session, box=box, data=HostCreate(name="h", url="file:///tmp/x"))
        for name, priority, lifetime in (("src", 50, 3600), ("fast", 40, 7200), ("late", 60, 900)):
            catalog.create_destination(
                session,
                data=DestinationCreate(
                    name=name, hosts=["h"], default_priority=priority, default_lifetime=lifetime
                ),
            )
        catalog.create_alias(
            session,
            data=AliasCreate(name="to-fast", source="src", target="fast", priority=5, lifetime=600),
        )
        catalog.create_alias(
            session, data=AliasCreate(name="to-late", source="src", target="late", delay=300)
        )


async def _push(engine: Engine, store: Store, **options: object) -> dict[str, DataTransfer]:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"data"

    result = await ingest(
        engine=engine,
        store=store,
        destination="src",
        name="f.bin",
        chunks=chunks(),
        options=PushOptions(**options),  # type: ignore[arg-type]
    )
    with session_scope(engine) as session:
        legs = [session.get(DataTransfer, i) for i in result.transfer_ids]
        return {catalog.transfer_public(session, t).destination: t for t in legs if t is not None}


@pytest.mark.usefixtures("site")
async def test_alias_priority_lifetime_and_delay(engine: Engine, store: Store) -> None:
    legs = await _push(engine, store)
    src, fast, late = legs["src"], legs["fast"], legs["late"]
    # The alias's own values, else the alias target's defaults (not the source's).
    assert (src.priority, fast.priority, late.priority) == (50, 5, 60)
    assert src.expires - src.scheduled == timedelta(seconds=3600)
    assert fast.expires - fast.scheduled == timedelta(seconds=600)
    assert late.expires - late.scheduled == timedelta(seconds=900)
    # The alias's delay puts its leg later, and scheduled: it waits for its time.
    assert fast.scheduled == src.scheduled
    assert late.scheduled - src.scheduled == timedelta(seconds=300)
    assert (src.status, fast.status, late.status) == (
        TransferStatus.WAIT,
        TransferStatus.WAIT,
        TransferStatus.SCHE,
    )


@pytest.mark.usefixtures("site")
async def test_push_options_come_before_the_alias(engine: Engine, store: Store) -> None:
    legs = await _push(engine, store, priority=1, lifetime=120, delay=60)
    src, fast, late = legs["src"], legs["fast"], legs["late"]
    assert {t.priority for t in legs.values()} == {1}
    assert {t.expires - t.scheduled for t in legs.values()} == {timedelta(seconds=120)}
    # The push's delay, and the alias's on top of it.
    assert fast.scheduled == src.scheduled
    assert late.scheduled - src.scheduled == timedelta(seconds=300)
    assert {t.status for t in legs.values()} == {TransferStatus.SCHE}


@pytest.mark.usefixtures("site")
async def test_an_alias_leg_that_would_expire_refuses_the_push(
    engine: Engine, store: Store
) -> None:
    # Sent for 700 s ago: src (1 h) and late (15 min, from 300 s later) would still be
    # valid, but the alias's 10 min for fast are over: the whole push is refused.
    past = datetime.now(UTC) - timedelta(seconds=700)
    with pytest.raises(IngestError, match="'fast' would expire before it starts"):
        await _push(engine, store, at=past)
    with session_scope(engine) as session:
        assert catalog.list_transfers(session, destinations=None, limit=10) == []
    legs = await _push(engine, store, at=past + timedelta(seconds=200))
    assert set(legs) == {"src", "fast", "late"}
    assert legs["late"].scheduled - legs["src"].scheduled == timedelta(seconds=300)
