"""Asynchronous push: register files by source URL and start their retrievals; group progress.

Also starts the copies of newly stored objects (replicas, archives) for synchronous pushes,
and serves the directory views of the store (by destination, by metadata key).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from ecpds.core.dispatch import SWEEP_LATER, TemporalDispatcher, best_effort
from ecpds.core.models import INPUT, HostUrlText
from ecpds.core.retrieval import (
    MAX_SOURCES,
    SourceSpec,
    register_sources,
)
from ecpds.core.views import by_destination, by_metadata, group_progress
from ecpds.portal.api.deps import (
    SessionDep,
    StateDep,
    UserDep,
    check_destination_access,
    visible_destinations,
)
from ecpds.portal.api.errors import refusals
from ecpds.portal.api.files import PushFields

router = APIRouter(tags=["files"])


class Source(BaseModel):
    model_config = INPUT
    url: HostUrlText = Field(min_length=3, description="e.g. sftp://user@host/dir/file")
    name: str | None = Field(default=None, description="file name (default: the URL's)")
    target: str | None = Field(default=None, description="name at the remote site")


class SourcesRequest(PushFields):
    model_config = INPUT
    sources: list[Source] = Field(min_length=1, max_length=MAX_SOURCES)


class RegisteredFile(BaseModel):
    id: str
    name: str
    source: str
    transfers: list[int]


class SourcesResult(BaseModel):
    group: str | None
    new: bool
    files: list[RegisteredFile]


class GroupResult(BaseModel):
    group: str
    total: int
    arrived: int
    pending: int
    failed: list[dict[str, str]]


@router.post(
    "/destinations/{destination}/sources",
    status_code=status.HTTP_201_CREATED,
    responses=refusals(404, 409, 429, 503),
)
async def register(
    destination: str, body: SourcesRequest, state: StateDep, user: UserDep
) -> SourcesResult:
    """Register files by source URL (metadata only); a retrieval per file fetches them."""
    dispatcher = state.dispatcher
    if not isinstance(dispatcher, TemporalDispatcher):
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "asynchronous push needs the workflow engine, which the portal cannot reach",
        )
    registered, new = await run_in_threadpool(
        lambda: register_sources(
            state.engine,
            state.box,
            destination=destination,
            sources=[SourceSpec(s.url, s.name, s.target) for s in body.sources],
            user=user,
            options=body.options(),
        )
    )
    if new:
        await best_effort(
            dispatcher.retrieve([r.id for r in registered], destination),
            what=f"starting the retrievals of {len(registered)} files for {destination!r}",
            later=SWEEP_LATER,
        )
    return SourcesResult(
        group=body.group,
        new=new,
        files=[
            RegisteredFile(id=r.id, name=r.name, source=r.source, transfers=r.transfers)
            for r in registered
        ],
    )


@router.get("/groups/{group}", responses=refusals(404))
def get_group(group: str, session: SessionDep, user: UserDep) -> GroupResult:
    """How many of the group's files are in the store, which failed (and why), how many wait."""
    progress = group_progress(
        session, group=group, destinations=visible_destinations(session, user)
    )
    if progress.total == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown group {group!r}")
    return GroupResult(
        group=group,
        total=progress.total,
        arrived=progress.arrived,
        pending=progress.pending,
        failed=progress.failed,
    )


class ViewEntry(BaseModel):
    path: str
    id: str
    size: int
    arrived: datetime | None


@router.get("/views/destinations/{destination}", responses=refusals(404))
def view_destination(
    destination: str,
    session: SessionDep,
    user: UserDep,
    prefix: str = "",
    limit: Annotated[int, Query(ge=1, le=100000)] = 1000,
) -> list[ViewEntry]:
    """The destination's files as a folder tree of their target names."""
    check_destination_access(session, user, destination)
    entries = by_destination(session, destination=destination, prefix=prefix, limit=limit)
    return [
        ViewEntry(path=e.path, id=e.data_file_id, size=e.size, arrived=e.arrived) for e in entries
    ]


@router.get("/views/metadata/{key}")
def view_metadata(
    key: str,
    session: SessionDep,
    user: UserDep,
    value: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100000)] = 1000,
) -> list[ViewEntry]:
    """The files with metadata KEY, as VALUE/NAME."""
    entries = by_metadata(
        session, key=key, value=value, destinations=visible_destinations(session, user), limit=limit
    )
    return [
        ViewEntry(path=e.path, id=e.data_file_id, size=e.size, arrived=e.arrived) for e in entries
    ]
