"""Data users: portal logins with hashed passwords and the destinations they may reach."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from ecpds.core import catalog
from ecpds.core.models import INPUT, DataUserCreate, DataUserPublic, DataUserUpdate
from ecpds.portal.api.deps import AdminDep, SessionDep, UserDep
from ecpds.portal.api.errors import refusals

router = APIRouter(prefix="/users", tags=["users"])


class UserIn(DataUserCreate):
    model_config = INPUT  # type: ignore[assignment]


class UserPatch(DataUserUpdate):
    model_config = INPUT  # type: ignore[assignment]


@router.get("")
def list_users(session: SessionDep, _: AdminDep) -> list[DataUserPublic]:
    return [catalog.user_public(session, u) for u in catalog.list_users(session)]


@router.post("", status_code=status.HTTP_201_CREATED, responses=refusals(409))
def create_user(data: UserIn, session: SessionDep, _: AdminDep) -> DataUserPublic:
    user = catalog.create_user(session, data=data)
    session.commit()
    return catalog.user_public(session, user)


@router.get("/{name}", responses=refusals(403, 404))
def get_user(name: str, session: SessionDep, caller: UserDep) -> DataUserPublic:
    if not caller.admin and caller.name != name:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"user {caller.name!r} is not an admin")
    return catalog.user_public(session, catalog.get_user(session, name=name))


@router.patch(
    "/{name}",
    responses=refusals(404)
    | {409: {"description": "the caller demoting itself, or no active admin left"}},
)
def update_user(
    name: str, data: UserPatch, session: SessionDep, caller: AdminDep
) -> DataUserPublic:
    user = catalog.update_user(session, name=name, data=data, caller=caller)
    session.commit()
    return catalog.user_public(session, user)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=refusals(404) | {409: {"description": "the caller itself or the last admin"}},
)
def delete_user(name: str, session: SessionDep, caller: AdminDep) -> None:
    catalog.delete_user(session, name=name, caller=caller)
    session.commit()
