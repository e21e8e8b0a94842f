"""Dependencies of the REST API routes, as `Annotated` aliases: state, session, caller."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from sqlalchemy import Engine
from sqlmodel import Session

from ecpds.core import catalog
from ecpds.core.ingest import Dispatcher
from ecpds.core.models import DataUser
from ecpds.core.secrets import CredentialBox
from ecpds.core.settings import Settings
from ecpds.core.store import Store


@dataclass
class ApiState:
    """What every route needs; built once by `create_app`."""

    settings: Settings
    engine: Engine
    store: Store
    box: CredentialBox
    dispatcher: Dispatcher | None = None


def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


StateDep = Annotated[ApiState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    """A session per request; routes that write commit it themselves before answering."""
    with Session(state.engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_basic = HTTPBasic(auto_error=False, realm="ecpds")
_bearer = HTTPBearer(auto_error=False)

# argon2 is slow on purpose; a password already checked against the same hash is not
# checked again, so that scripts pushing many files pay for it once.
_verified: set[tuple[int, str, str]] = set()
_VERIFIED_MAX = 4096


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": 'Basic realm="ecpds"'}
    )


def _password_user(session: Session, name: str, password: str) -> DataUser | None:
    user = catalog.find_user(session, name=name)
    if user is None or user.id is None or not user.active or not user.password_hash:
        return None
    key = (user.id, user.password_hash, hashlib.sha256(password.encode()).hexdigest())
    if key in _verified:
        return user
    if catalog.authenticate(session, name=name, password=password) is None:
        return None
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified.add(key)
    return user


def current_user(
    session: SessionDep,
    basic: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> DataUser:
    if bearer is not None:
        user = catalog.user_for_token(session, token=bearer.credentials)
        if user is None:
            raise _unauthorized("unknown or revoked token")
        return user
    if basic is not None:
        user = _password_user(session, basic.username, basic.password)
        if user is None:
            raise _unauthorized(f"wrong user name or password for {basic.username!r}")
        return user
    raise _unauthorized("credentials needed: HTTP Basic (user, password) or a bearer token")


UserDep = Annotated[DataUser, Depends(current_user)]


def admin_user(user: UserDep) -> DataUser:
    if not user.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"user {user.name!r} is not an admin")
    return user


AdminDep = Annotated[DataUser, Depends(admin_user)]


def visible_destinations(session: Session, user: DataUser) -> list[str] | None:
    """The destinations `user` may read; None means all of them (admins)."""
    return None if user.admin else catalog.user_destinations(session, user=user)


def check_destination_access(session: Session, user: DataUser, destination: str) -> None:
    allowed = visible_destinations(session, user)
    if allowed is not None and destination not in allowed:
        # Same answer as for a destination that does not exist: names are not disclosed.
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown destination {destination!r}")
