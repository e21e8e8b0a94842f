"""OpenECPDS's REST routes that existing tools call, under /ecpds/v1: today the one ECMWF's
Aviso notification server asks to authorise a user's watch and replay."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from ecpds.core import access, catalog
from ecpds.core.errors import Denied
from ecpds.portal.api.deps import SessionDep, UserDep
from ecpds.portal.api.errors import refusals

PREFIX = "/ecpds/v1"
router = APIRouter(prefix="/destination", tags=["OpenECPDS compatibility"])


class DestinationName(BaseModel):
    name: str


class DestinationList(BaseModel):
    """OpenECPDS's answer, field names as Aviso reads them. An unknown user is a 200 with
    no destinations, `success: "no"` and the `error`: Aviso's Python server refuses on
    that `success` and shows the error, its Rust server reads only the (empty) list, and
    neither takes it for an ECPDS server down, as it would a 404."""

    destinationList: list[DestinationName]
    success: Literal["yes", "no"] = "yes"
    error: str | None = None


@router.get("/list", responses=refusals(403), response_model_exclude_none=True)
def destination_list(
    session: SessionDep,
    caller: UserDep,
    id: Annotated[str, Query(description="the data user whose destinations are listed")],
) -> DestinationList:
    """The destinations data user `id` may see; an admin may ask about anyone, another
    user only about itself."""
    if not caller.admin and id != caller.name:
        raise Denied(f"user {caller.name!r} may list only its own destinations, not {id!r}'s")
    user = catalog.find_user(session, name=id)
    if user is None:
        return DestinationList(destinationList=[], success="no", error=f"unknown user {id!r}")
    # A deactivated user reaches nothing, though its links to destinations are kept.
    names = access.user_destinations(session, user=user) if user.active else []
    return DestinationList(destinationList=[DestinationName(name=name) for name in names])
