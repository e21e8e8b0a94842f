"""Asynchronous push: register files by source URL and start their retrievals; group progress.

Also starts the copies of newly stored objects (replicas, archives) for synchronous pushes,
and serves the directory views of the store (by destination, by metadata key).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError

from ecpds.core.dispatch import TemporalDispatcher
from ecpds.core.engine import (
    DATA_FILE_ID,
    DESTINATION,
    RETRIEVAL_BATCH_WORKFLOW,
    RetrievalBatchInput,
    retrieval_batch_workflow_id,
)
from ecpds.core.models import INPUT, HostUrlText
from ecpds.core.retrieval import (
    BATCH,
    MAX_SOURCES,
    SourceSpec,
    register_sources,
)
from ecpds.core.views import by_destination, by_metadata, group_progress
from ecpds.portal.api.deps import (
    ApiState,
    SessionDep,
    StateDep,
    UserDep,
    check_destination_access,
    visible_destinations,
)
from ecpds.portal.api.errors import refusals
from ecpds.portal.api.files import PushFields

router = APIRouter(tags=["files"])

STARTS_IN_FLIGHT = 64


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


def temporal_client(state: ApiState) -> tuple[Client, str] | None:
    """The portal's Temporal client and task queue, if it has one."""
    if isinstance(state.dispatcher, TemporalDispatcher):
        return state.dispatcher.client, state.dispatcher.task_queue
    return None


async def _start_all(
    client: Client, workflow: str, items: list[tuple[str, Any, TypedSearchAttributes]], queue: str
) -> None:
    gate = asyncio.Semaphore(STARTS_IN_FLIGHT)

    async def start(workflow_id: str, arg: Any, attributes: TypedSearchAttributes) -> None:
        async with gate:
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await client.start_workflow(
                    workflow,
                    arg,
                    id=workflow_id,
                    task_queue=queue,
                    search_attributes=attributes,
                )

    await asyncio.gather(*(start(*item) for item in items))


def _attrs(data_file_id: str, destination: str | None = None) -> TypedSearchAttributes:
    pairs: list[SearchAttributePair[str]] = [SearchAttributePair(DATA_FILE_ID, data_file_id)]
    if destination:
        pairs.append(SearchAttributePair(DESTINATION, destination))
    return TypedSearchAttributes(pairs)


@router.post(
    "/destinations/{destination}/sources",
    status_code=status.HTTP_201_CREATED,
    responses=refusals(404, 409, 429, 503),
)
async def register(
    destination: str, body: SourcesRequest, state: StateDep, user: UserDep
) -> SourcesResult:
    """Register files by source URL (metadata only); a retrieval per file fetches them."""
    found = temporal_client(state)
    if found is None:
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
        client, queue = found
        ids = [r.id for r in registered]
        await _start_all(
            client,
            RETRIEVAL_BATCH_WORKFLOW,
            [
                (
                    retrieval_batch_workflow_id(ids[i]),
                    RetrievalBatchInput(ids[i : i + BATCH], destination),
                    _attrs(ids[i], destination),
                )
                for i in range(0, len(ids), BATCH)
            ],
            queue,
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
