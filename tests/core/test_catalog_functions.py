"""Catalog functions on SQLite and PostgreSQL: secrets at rest, aliases, ingest, bootstrap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from ecpds.cli.client import api_login
from ecpds.core import access, catalog, errors
from ecpds.core.db import session_scope
from ecpds.core.errors import Unauthenticated
from ecpds.core.ingest import IngestError, ingest
from ecpds.core.models import (
    AliasCreate,
    DataFile,
    DataTransfer,
    DataUserCreate,
    DataUserUpdate,
    DestinationCreate,
    DestinationUpdate,
    HostCreate,
    HostUpdate,
    TransferStatus,
)
from ecpds.core.push import PushOptions
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.store import Store

SECRET = "very-secret-password"


@pytest.fixture
def box(tmp_path: Path) -> CredentialBox:
    return CredentialBox(load_or_create_key(tmp_path / "secret.key"))


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_host_credentials_are_encrypted_at_rest(engine: Engine, box: CredentialBox) -> None:
    with session_scope(engine) as session:
        catalog.create_host(
            session,
            box=box,
            data=HostCreate(name="h", url="sftp://ops@far/in", credentials={"password": SECRET}),
        )
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT credentials_encrypted FROM host")).scalar_one()
    assert SECRET not in raw
    with session_scope(engine) as session:
        assert catalog.host_credentials(session, box=box, name="h") == {"password": SECRET}
        catalog.update_host(session, box=box, name="h", data=HostUpdate(url="sftp://ops@near/in"))
        # Changing the URL keeps the credentials; a bad URL is refused with its name.
        assert catalog.host_credentials(session, box=box, name="h") == {"password": SECRET}
        with pytest.raises(errors.Invalid, match="'h'.*nope"):
            catalog.update_host(session, box=box, name="h", data=HostUpdate(url="nope://x"))


def test_user_passwords_are_hashed_and_checked(engine: Engine) -> None:
    with session_scope(engine) as session:
        catalog.create_user(session, data=DataUserCreate(name="u", password="first-password"))
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM datauser")).scalar_one()
    assert "first-password" not in stored and stored.startswith("$argon2")
    with session_scope(engine) as session:
        assert access.password_user(session, name="u", password="first-password").name == "u"
        with pytest.raises(Unauthenticated, match="wrong user name or password for 'u'"):
            access.password_user(session, name="u", password="wrong-password")
        catalog.update_user(session, name="u", data=DataUserUpdate(active=False))
        with pytest.raises(Unauthenticated, match="wrong user name or password for 'u'"):
            access.password_user(session, name="u", password="first-password")


def test_aliases_chain_match_and_rewrite(engine: Engine) -> None:
    with session_scope(engine) as session:
        for name in ("a", "b", "c", "d"):
            catalog.create_destination(session, data=DestinationCreate(name=name))
        catalog.create_alias(session, data=AliasCreate(name="ab", source="a", target="b"))
        catalog.create_alias(
            session,
            data=AliasCreate(
                name="bc", source="b", target="c", pattern=r"^(\w+)\.grib$", rewrite=r"\1.grb"
            ),
        )
        catalog.create_alias(session, data=AliasCreate(name="ca", source="c", target="a"))
        catalog.create_alias(
            session, data=AliasCreate(name="ad", source="a", target="d", active=False)
        )
        a = catalog.get_destination(session, name="a")
        legs = catalog.aliases_for(session, destination=a, target="t.grib")
        assert [(d.name, t, al.name) for d, t, al in legs] == [
            ("b", "t.grib", "ab"),
            ("c", "t.grb", "bc"),
        ]
        legs = catalog.aliases_for(session, destination=a, target="t.txt")
        assert [(d.name, t) for d, t, _ in legs] == [("b", "t.txt")]
        with pytest.raises(errors.Invalid, match="rewrite needs a pattern"):
            catalog.create_alias(
                session, data=AliasCreate(name="x", source="a", target="d", rewrite="y")
            )


def test_destination_hosts_keep_their_order(engine: Engine, box: CredentialBox) -> None:
    with session_scope(engine) as session:
        for name in ("p", "q", "r"):
            catalog.create_host(session, box=box, data=HostCreate(name=name, url="file:///tmp"))
        catalog.create_destination(session, data=DestinationCreate(name="d", hosts=["r", "p"]))
        d = catalog.get_destination(session, name="d")
        assert [h.name for h in catalog.destination_hosts(session, destination=d)] == ["r", "p"]
        catalog.update_destination(session, name="d", data=DestinationUpdate(hosts=["q", "r"]))
        assert catalog.destination_public(session, d).hosts == ["q", "r"]
        with pytest.raises(catalog.Conflict, match="'d' \\(primary\\)"):
            catalog.delete_host(session, name="q")
        catalog.delete_host(session, name="q", force=True)
        assert catalog.destination_public(session, d).hosts == ["r"]
        with pytest.raises(errors.Conflict, match="'d' already exists"):
            catalog.create_destination(session, data=DestinationCreate(name="d"))


def test_bootstrap_admin_once(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "var")
    password = catalog.bootstrap_admin(engine, settings)
    assert password is not None
    assert settings.admin_file.stat().st_mode & 0o777 == 0o600
    assert f'api_password = "{password}"' in settings.admin_file.read_text()
    assert catalog.bootstrap_admin(engine, settings) is None
    with Session(engine) as session:
        assert access.password_user(session, name="admin", password=password).admin


def test_bootstrap_admin_takes_a_mounted_password(engine: Engine, tmp_path: Path) -> None:
    """Kubernetes mounts the first admin's password from a Secret: admin gets it, no
    admin.toml is written, and the CLI logs in with it."""
    secret = tmp_path / "admin-password"
    settings = Settings(home=tmp_path / "var", admin_password_file=secret)
    with pytest.raises(ValueError, match="admin-password: No such file"):
        catalog.bootstrap_admin(engine, settings)
    secret.write_text("short\n")
    with pytest.raises(ValueError, match="needs 8 characters"):
        catalog.bootstrap_admin(engine, settings)
    secret.write_text("a mounted secret\n")
    assert catalog.bootstrap_admin(engine, settings) == "a mounted secret"
    assert not settings.admin_file.exists()
    with Session(engine) as session:
        assert access.password_user(session, name="admin", password="a mounted secret").admin
    assert api_login(settings) == (
        "admin",
        "a mounted secret",
        f"the password of 'admin' in {secret}",
    )


def test_ingest_limits_leave_nothing_behind(engine: Engine, store: Store) -> None:
    with session_scope(engine) as session:
        catalog.create_destination(
            session, data=DestinationCreate(name="small", max_file_size=10, max_pending=1)
        )

    async def push(name: str, *parts: bytes) -> None:
        await ingest(
            engine=engine, store=store, destination="small", name=name, chunks=_chunks(*parts)
        )

    with pytest.raises(IngestError, match="larger than the limit of 10") as too_big:
        asyncio.run(push("big", b"123456", b"789012"))
    assert too_big.value.status == 413
    asyncio.run(push("ok", b"12345"))
    with pytest.raises(IngestError, match="pending") as busy:
        asyncio.run(push("more", b"1"))
    assert busy.value.status == 429
    with Session(engine) as session:
        files = session.exec(select(DataFile)).all()
        assert [f.name for f in files] == ["ok"]
        transfer = session.exec(select(DataTransfer)).one()
        assert transfer.status == TransferStatus.HOLD  # no dissemination host: a bucket
    assert store.partials() == []
    assert [p.name for p in Path(store.primary.root).rglob("*") if p.is_file()] == [files[0].id]


def test_ingest_removes_the_object_when_the_catalog_refuses(engine: Engine, store: Store) -> None:
    with session_scope(engine) as session:
        catalog.create_destination(session, data=DestinationCreate(name="d"))

    async def push(name: str) -> str:
        result = await ingest(
            engine=engine,
            store=store,
            destination="d",
            name=name,
            chunks=_chunks(b"abc"),
            options=PushOptions(reqid="request-1"),
        )
        return result.data_file.id

    first = asyncio.run(push("one"))
    with pytest.raises(IngestError, match="request-1") as dup:
        asyncio.run(push("two"))
    assert dup.value.status == 409
    assert [p.name for p in Path(store.primary.root).rglob("*") if p.is_file()] == [first]


def test_an_upload_that_breaks_off_leaves_nothing(engine: Engine, store: Store) -> None:
    with session_scope(engine) as session:
        catalog.create_destination(session, data=DestinationCreate(name="d"))

    async def breaking() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 700_000
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        asyncio.run(
            ingest(engine=engine, store=store, destination="d", name="f", chunks=breaking())
        )
    with Session(engine) as session:
        assert session.exec(select(DataFile)).all() == []
    assert [p for p in Path(store.primary.root).rglob("*") if p.is_file()] == []
