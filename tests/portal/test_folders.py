"""Folders a data user makes: kept in the catalog until a file is put in them or they are
removed, seen the same way through every door (the client-side runs are in test_clients)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlmodel import select

from ecpds.core import catalog
from ecpds.core.access import Principal
from ecpds.core.db import session_scope
from ecpds.core.errors import Conflict, Denied, NotFound
from ecpds.core.models import DataUserUpdate, PortalFolder
from ecpds.portal.access import login_password
from ecpds.portal.vfs import PortalFS

from .conftest import ALICE_PASSWORD, Portal


def alice(portal: Portal) -> Principal:
    return login_password(portal.engine, "alice", ALICE_PASSWORD)


def names(fs: PortalFS, principal: Principal, *parts: str) -> list[str]:
    return [e.name + ("/" if e.is_dir else "") for e in fs.listdir(principal, parts)]


def put(fs: PortalFS, principal: Principal, path: str, data: bytes = b"x") -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    asyncio.run(fs.upload(principal, tuple(path.strip("/").split("/")), chunks()))


def kept(portal: Portal) -> list[str]:
    with session_scope(portal.engine) as session:
        return sorted(session.exec(select(PortalFolder.path)).all())


def test_a_folder_is_kept_until_a_file_is_put_in_it(portal: Portal) -> None:
    fs, user = portal.fs, alice(portal)
    fs.mkdir(user, ("alpha", "a", "b"))
    assert names(fs, user, "alpha") == ["a/"]
    assert names(fs, user, "alpha", "a") == ["b/"]
    assert names(fs, user, "alpha", "a", "b") == []
    assert fs.stat(user, ("alpha", "a", "b")).is_dir
    put(fs, user, "/alpha/a/b/first.txt")
    # From now on the folder exists through its file, as folders nobody made do.
    assert kept(portal) == []
    assert names(fs, user, "alpha", "a", "b") == ["first.txt"]
    fs.delete(user, ("alpha", "a", "b", "first.txt"))
    with pytest.raises(NotFound):
        fs.listdir(user, ("alpha", "a", "b"))


def test_folders_are_made_once_and_removed_only_when_empty(portal: Portal) -> None:
    fs, user = portal.fs, alice(portal)
    put(fs, user, "/alpha/file.txt")
    put(fs, user, "/alpha/full/inside.txt")
    for taken in (("alpha", "file.txt"), ("alpha", "full"), ("alpha", "file.txt", "below")):
        with pytest.raises(Conflict):
            fs.mkdir(user, taken)
    fs.mkdir(user, ("alpha", "outer"))
    fs.mkdir(user, ("alpha", "outer", "inner"))
    with pytest.raises(Conflict):
        fs.mkdir(user, ("alpha", "outer"))
    for not_empty in (("alpha", "outer"), ("alpha", "full")):
        with pytest.raises(Conflict, match="not empty"):
            fs.rmdir(user, not_empty)
    fs.rmdir(user, ("alpha", "outer", "inner"))
    fs.rmdir(user, ("alpha", "outer"))
    with pytest.raises(NotFound):
        fs.rmdir(user, ("alpha", "outer"))
    assert names(fs, user, "alpha") == ["file.txt", "full/"]


def test_making_and_removing_folders_needs_mkdir(portal: Portal) -> None:
    fs = portal.fs
    fs.mkdir(alice(portal), ("alpha", "made"))
    with session_scope(portal.engine) as session:
        catalog.update_user(
            session, name="alice", data=DataUserUpdate(operations=["get", "put", "dir"])
        )
    user = alice(portal)
    with pytest.raises(Denied):
        fs.mkdir(user, ("alpha", "other"))
    with pytest.raises(Denied):
        fs.rmdir(user, ("alpha", "made"))
    with pytest.raises(NotFound):  # another user's destination is not there at all
        fs.mkdir(user, ("beta", "made"))
    assert kept(portal) == ["made"]


def test_deleting_the_destination_removes_its_folders(portal: Portal) -> None:
    portal.fs.mkdir(alice(portal), ("alpha", "made"))
    with session_scope(portal.engine) as session:
        catalog.delete_destination(session, name="alpha", force=True)
    assert kept(portal) == []
