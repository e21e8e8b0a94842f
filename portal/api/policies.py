"""Policies: named groups of destinations that data users reach as a whole (admins only)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from ecpds.core import catalog, errors
from ecpds.core.models import (
    INPUT,
    NAME_PATTERN,
    DataUser,
    DataUserPolicy,
    Destination,
    NameRef,
    Policy,
    PolicyDestination,
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


class PolicyPublic(BaseModel):
    name: str
    comment: str
    destinations: list[str]
    users: list[str]


def _get(session: Session, name: str) -> Policy:
    policy = session.exec(select(Policy).where(Policy.name == name)).first()
    if policy is None:
        raise errors.NotFound(f"unknown policy {name!r}")
    return policy


def _public(session: Session, policy: Policy) -> PolicyPublic:
    destinations = session.exec(
        select(Destination.name)
        .join(PolicyDestination, col(PolicyDestination.destination_id) == Destination.id)
        .where(PolicyDestination.policy_id == policy.id)
        .order_by(Destination.name)
    ).all()
    users = session.exec(
        select(DataUser.name)
        .join(DataUserPolicy, col(DataUserPolicy.user_id) == DataUser.id)
        .where(DataUserPolicy.policy_id == policy.id)
        .order_by(DataUser.name)
    ).all()
    return PolicyPublic(
        name=policy.name, comment=policy.comment, destinations=list(destinations), users=list(users)
    )


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
    return [_public(session, p) for p in session.exec(select(Policy).order_by(Policy.name)).all()]


@router.post("", status_code=status.HTTP_201_CREATED, responses=refusals(409))
def create_policy(data: PolicyIn, session: SessionDep, _: AdminDep) -> PolicyPublic:
    if session.exec(select(Policy).where(Policy.name == data.name)).first() is not None:
        raise errors.Conflict(f"policy {data.name!r} already exists")
    policy = Policy(name=data.name, comment=data.comment)
    session.add(policy)
    session.flush()
    _link(session, policy, data.destinations, data.users)
    session.commit()
    return _public(session, policy)


@router.get("/{name}", responses=refusals(404))
def get_policy(name: str, session: SessionDep, _: AdminDep) -> PolicyPublic:
    return _public(session, _get(session, name))


@router.patch("/{name}", responses=refusals(404))
def update_policy(name: str, data: PolicyPatch, session: SessionDep, _: AdminDep) -> PolicyPublic:
    policy = _get(session, name)
    if data.comment is not None:
        policy.comment = data.comment
        session.add(policy)
    _link(session, policy, data.destinations, data.users)
    session.commit()
    return _public(session, policy)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=refusals(404))
def delete_policy(name: str, session: SessionDep, _: AdminDep) -> Response:
    session.delete(_get(session, name))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
