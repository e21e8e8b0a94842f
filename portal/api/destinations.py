"""Destinations: where transfers queue for one remote site, with their ordered hosts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.concurrency import run_in_threadpool

from ecpds.core import catalog
from ecpds.core.dispatch import TemporalDispatcher, stop_deleted_destination
from ecpds.core.models import INPUT, DestinationCreate, DestinationPublic, DestinationUpdate
from ecpds.portal.api.acquisition import resync, schedules_before, sync_schedules
from ecpds.portal.api.deps import (
    AdminDep,
    SessionDep,
    StateDep,
    UserDep,
    check_destination_access,
    visible_destinations,
)
from ecpds.portal.api.errors import refusals

router = APIRouter(prefix="/destinations", tags=["destinations"])


class DestinationIn(DestinationCreate):
    model_config = INPUT  # type: ignore[assignment]


class DestinationPatch(DestinationUpdate):
    model_config = INPUT  # type: ignore[assignment]


@router.get("")
def list_destinations(session: SessionDep, user: UserDep) -> list[DestinationPublic]:
    names = visible_destinations(session, user)
    return [
        catalog.destination_public(session, d)
        for d in catalog.list_destinations(session, names=names)
    ]


@router.post("", status_code=status.HTTP_201_CREATED, responses=refusals(409))
def create_destination(
    data: DestinationIn, session: SessionDep, state: StateDep, _: AdminDep
) -> DestinationPublic:
    destination = catalog.create_destination(session, data=data, box=state.box)
    session.commit()
    sync_schedules(state)
    return catalog.destination_public(session, destination)


@router.get("/{name}", responses=refusals(404))
def get_destination(name: str, session: SessionDep, user: UserDep) -> DestinationPublic:
    check_destination_access(session, user, name)
    return catalog.destination_public(session, catalog.get_destination(session, name=name))


@router.patch("/{name}", responses=refusals(404))
def update_destination(
    name: str, data: DestinationPatch, session: SessionDep, state: StateDep, _: AdminDep
) -> DestinationPublic:
    before = schedules_before(state)
    destination = catalog.update_destination(session, name=name, data=data, box=state.box)
    session.commit()
    sync_schedules(state, before)
    return catalog.destination_public(session, destination)


ForceQuery = Annotated[
    bool, Query(description="delete even when transfers, aliases, users or policies use it")
]


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=refusals(404)
    | {409: {"description": "in use (the answer names by what): pass force=true"}},
)
async def delete_destination(
    name: str, session: SessionDep, state: StateDep, _: AdminDep, force: ForceQuery = False
) -> None:
    """Delete a destination; its scheduler stops and its transfers keep their history."""

    def delete() -> tuple[list[int], set[str]]:
        before = schedules_before(state)
        stopped = catalog.delete_destination(session, name=name, force=force)
        session.commit()
        return stopped, before

    stopped, before = await run_in_threadpool(delete)
    await resync(state, before)
    if isinstance(state.dispatcher, TemporalDispatcher):
        await stop_deleted_destination(state.dispatcher.client, name, stopped)
