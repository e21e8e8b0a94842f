"""Policies: named groups of destinations that data users reach as a whole (admins only)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field
from sqlmodel import Session, select

from ecpds.core import catalog, errors
from ecpds.core.models import (
    INPUT,
    NAME_PATTERN,
    DataUserPolicy,
    NameRef,
    Policy,
    PolicyDestination,
    PolicyPublic,
    UserRef,
)
from ecpds.portal.api.deps import AdminDep, SessionDep
from ecpds.portal.api.errors import refusals

router = APIRouter(prefix="/policies", tags=["policies"])


class PolicyIn(BaseModel):
    model_config = INPUT
    name: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    comment: str = ""
    destinations: list[NameRef] = Field(default_factory=list)
    users: list[UserRef] = Field(default_factory=list)


class PolicyPatch(BaseModel):
    model_config = INPUT
    comment: str | None = None
    destinations: list[NameRef] | None = None
    users: list[UserRef] | None = None


def _link(
    session: Session, policy: Policy, destinations: list[str] | None, users: list[str] | None
) -> None:
    assert policy.id is not None
    if destinations is not None:
        ids = []
        for name in dict.fromkeys(destinations):
            dest = catalog.find_destination(session, name=name)
            if dest is None or dest.id is None:
                raise errors.Invalid(f"policy {policy.name!r}: unknown destination {name!r}")
            ids.append(dest.id)
        for link in session.exec(
            select(PolicyDestination).where(PolicyDestination.policy_id == policy.id)
        ).all():
            session.delete(link)
        session.flush()
        for dest_id in ids:
            session.add(PolicyDestination(policy_id=policy.id, destination_id=dest_id))
    if users is not None:
        user_ids = []
        for name in dict.fromkeys(users):
            user = catalog.find_user(session, name=name)
            if user is None or user.id is None:
                raise errors.Invalid(f"policy {policy.name!r}: unknown user {name!r}")
            user_ids.append(user.id)
        for member in session.exec(
            select(DataUserPolicy).where(DataUserPolicy.policy_id == policy.id)
        ).all():
            session.delete(member)
        session.flush()
        for user_id in user_ids:
            session.add(DataUserPolicy(user_id=user_id, policy_id=policy.id))
    session.flush()


@router.get("")
def list_policies(session: SessionDep, _: AdminDep) -> list[PolicyPublic]:
    return [catalog.policy_public(session, p) for p in catalog.list_policies(session)]


@router.post("", status_code=status.HTTP_201_CREATED, responses=refusals(409))
def create_policy(data: PolicyIn, session: SessionDep, _: AdminDep) -> PolicyPublic:
    if session.exec(select(Policy).where(Policy.name == data.name)).first() is not None:
        raise errors.Conflict(f"policy {data.name!r} already exists")
    policy = Policy(name=data.name, comment=data.comment)
    session.add(policy)
    session.flush()
    _link(session, policy, data.destinations, data.users)
    session.commit()
    return catalog.policy_public(session, policy)


@router.get("/{name}", responses=refusals(404))
def get_policy(name: str, session: SessionDep, _: AdminDep) -> PolicyPublic:
    return catalog.policy_public(session, catalog.get_policy(session, name=name))


@router.patch("/{name}", responses=refusals(404))
def update_policy(name: str, data: PolicyPatch, session: SessionDep, _: AdminDep) -> PolicyPublic:
    policy = catalog.get_policy(session, name=name)
    if data.comment is not None:
        policy.comment = data.comment
        session.add(policy)
    _link(session, policy, data.destinations, data.users)
    session.commit()
    return catalog.policy_public(session, policy)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=refusals(404))
def delete_policy(name: str, session: SessionDep, _: AdminDep) -> Response:
    session.delete(catalog.get_policy(session, name=name))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
