"""Hosts: remote systems with a protocol URL, options and credentials (never returned)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from ecpds.core import catalog
from ecpds.core.models import INPUT, HostCreate, HostPublic, HostUpdate
from ecpds.portal.api.acquisition import schedules_before, sync_schedules
from ecpds.portal.api.deps import AdminDep, SessionDep, StateDep
from ecpds.portal.api.errors import refusals

router = APIRouter(prefix="/hosts", tags=["hosts"])


class HostIn(HostCreate):
    model_config = INPUT  # type: ignore[assignment]


class HostPatch(HostUpdate):
    model_config = INPUT  # type: ignore[assignment]


@router.get("")
def list_hosts(session: SessionDep, state: StateDep, _: AdminDep) -> list[HostPublic]:
    return [catalog.host_public(session, h, box=state.box) for h in catalog.list_hosts(session)]


@router.post("", status_code=status.HTTP_201_CREATED, responses=refusals(409))
def create_host(data: HostIn, session: SessionDep, state: StateDep, _: AdminDep) -> HostPublic:
    host = catalog.create_host(session, box=state.box, data=data)
    session.commit()
    sync_schedules(state)
    return catalog.host_public(session, host, box=state.box)


@router.get("/{name}", responses=refusals(404))
def get_host(name: str, session: SessionDep, state: StateDep, _: AdminDep) -> HostPublic:
    return catalog.host_public(session, catalog.get_host(session, name=name), box=state.box)


@router.patch("/{name}", responses=refusals(404))
def update_host(
    name: str, data: HostPatch, session: SessionDep, state: StateDep, _: AdminDep
) -> HostPublic:
    before = schedules_before(state)
    host = catalog.update_host(session, box=state.box, name=name, data=data)
    session.commit()
    sync_schedules(state, before)
    return catalog.host_public(session, host, box=state.box)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=refusals(404)
    | {409: {"description": "in a destination's host list: pass force=true"}},
)
def delete_host(
    name: str,
    session: SessionDep,
    state: StateDep,
    _: AdminDep,
    force: Annotated[bool, Query(description="delete even from destinations' host lists")] = False,
) -> None:
    before = schedules_before(state)
    catalog.delete_host(session, name=name, force=force)
    session.commit()
    sync_schedules(state, before)
