"""S3 access keys of data users: created here (the secret is shown once), listed, revoked."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel
from sqlmodel import select

from ecpds.core import catalog
from ecpds.core.access import create_access_key
from ecpds.core.models import AccessKey, DataUser
from ecpds.portal.api.deps import SessionDep, StateDep, UserDep
from ecpds.portal.api.errors import refusals

router = APIRouter(prefix="/users/{name}/keys", tags=["keys"])


class AccessKeyCreated(BaseModel):
    access_key_id: str
    secret_access_key: str


class AccessKeyPublic(BaseModel):
    access_key_id: str
    created: datetime


def _owner(session: SessionDep, caller: DataUser, name: str) -> DataUser:
    if not caller.admin and caller.name != name:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"user {caller.name!r} is not an admin")
    return catalog.get_user(session, name=name)


@router.post("", status_code=status.HTTP_201_CREATED, responses=refusals(403, 404))
def create_key(
    name: str, session: SessionDep, state: StateDep, caller: UserDep
) -> AccessKeyCreated:
    """A new key pair for the S3 API; keep the secret, it is not shown again."""
    user = _owner(session, caller, name)
    key_id, secret = create_access_key(session, state.box, user)
    session.commit()
    return AccessKeyCreated(access_key_id=key_id, secret_access_key=secret)


@router.get("", responses=refusals(403, 404))
def list_keys(name: str, session: SessionDep, caller: UserDep) -> list[AccessKeyPublic]:
    user = _owner(session, caller, name)
    rows = session.exec(select(AccessKey).where(AccessKey.user_id == user.id)).all()
    return [AccessKeyPublic(access_key_id=r.access_key_id, created=r.created) for r in rows]


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses=refusals(403, 404))
def delete_key(name: str, key_id: str, session: SessionDep, caller: UserDep) -> Response:
    user = _owner(session, caller, name)
    row = session.exec(
        select(AccessKey)
        .where(AccessKey.user_id == user.id)
        .where(AccessKey.access_key_id == key_id)
    ).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {name!r} has no key {key_id!r}")
    session.delete(row)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
