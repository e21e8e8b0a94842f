"""Expected products: what should reach a destination every day by when (`/expected`),
and whether it did (`GET /arrivals`: waiting, arrived, on time, late or missing)."""

from __future__ import annotations

from fastapi import APIRouter, status

from ecpds.core import arrivals, catalog
from ecpds.core.models import (
    INPUT,
    ExpectedProductCreate,
    ExpectedProductPublic,
    ExpectedProductStatus,
    ExpectedProductUpdate,
)
from ecpds.portal.api.deps import AdminDep, SessionDep, UserDep, visible_destinations
from ecpds.portal.api.errors import refusals

router = APIRouter(tags=["expected products"])


class ExpectedIn(ExpectedProductCreate):
    model_config = INPUT  # type: ignore[assignment]


class ExpectedPatch(ExpectedProductUpdate):
    model_config = INPUT  # type: ignore[assignment]


def _public(expected: object) -> ExpectedProductPublic:
    return ExpectedProductPublic.model_validate(expected, from_attributes=True)


@router.get("/expected")
def list_expected(session: SessionDep, user: UserDep) -> list[ExpectedProductPublic]:
    """Those of the destinations the caller sees."""
    mine = visible_destinations(session, user)
    return [_public(e) for e in catalog.list_expected(session, destinations=mine)]


@router.get("/arrivals")
def arrivals_today(session: SessionDep, user: UserDep) -> list[ExpectedProductStatus]:
    """Each one against today's due time (UTC), for the destinations the caller sees."""
    mine = visible_destinations(session, user)
    return arrivals.statuses(session, catalog.list_expected(session, destinations=mine))


@router.post("/expected", status_code=status.HTTP_201_CREATED, responses=refusals(409, 422))
def create_expected(data: ExpectedIn, session: SessionDep, _: AdminDep) -> ExpectedProductPublic:
    expected = catalog.create_expected(session, data=data)
    session.commit()
    return _public(expected)


@router.get("/expected/{name}", responses=refusals(404))
def get_expected(name: str, session: SessionDep, _: AdminDep) -> ExpectedProductPublic:
    return _public(catalog.get_expected(session, name=name))


@router.patch("/expected/{name}", responses=refusals(404, 422))
def update_expected(
    name: str, data: ExpectedPatch, session: SessionDep, _: AdminDep
) -> ExpectedProductPublic:
    expected = catalog.update_expected(session, name=name, data=data)
    session.commit()
    return _public(expected)


@router.delete("/expected/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=refusals(404))
def delete_expected(name: str, session: SessionDep, _: AdminDep) -> None:
    catalog.delete_expected(session, name=name)
    session.commit()
