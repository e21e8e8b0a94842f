"""Dependencies of the REST API routes, as `Annotated` aliases: state, session, caller."""

from __future__ import annotations

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

from ecpds.core import access
from ecpds.core.errors import Unauthenticated
from ecpds.core.ingest import Dispatcher
from ecpds.core.models import DataUser
from ecpds.core.notifications import Doors
from ecpds.core.secrets import CredentialBox
from ecpds.core.settings import Settings
from ecpds.core.snapshot import CatalogSnapshots
from ecpds.core.store import Store


@dataclass
class ApiState:
    """What every route needs; built once by `create_app`."""

    settings: Settings
    engine: Engine
    store: Store
    box: CredentialBox
    snapshots: CatalogSnapshots  # the catalog's counts, for the dashboard and /metrics
    dispatcher: Dispatcher | None = None

    @property
    def doors(self) -> Doors:
        """Where products are served, for the notifications of uploads."""
        return Doors.of(self.settings)


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


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": 'Basic realm="ecpds"'}
    )


def current_user(
    request: Request,
    session: SessionDep,
    basic: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> DataUser:
    """The caller, logged in by the access layer with a bearer token or HTTP Basic (and
    named in `request.state.caller` for the event log)."""
    try:
        user = None
        if bearer is not None:
            user = access.token_user(session, token=bearer.credentials)
        elif basic is not None:
            user = access.password_user(session, name=basic.username, password=basic.password)
        if user is not None:
            request.state.caller = user.name
            return user
    except Unauthenticated as exc:
        raise _unauthorized(str(exc)) from exc
    raise _unauthorized("credentials needed: HTTP Basic (user, password) or a bearer token")


UserDep = Annotated[DataUser, Depends(current_user)]


def admin_user(user: UserDep) -> DataUser:
    if not user.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"user {user.name!r} is not an admin")
    return user


AdminDep = Annotated[DataUser, Depends(admin_user)]


def visible_destinations(session: Session, user: DataUser) -> list[str] | None:
    """The destinations `user` may read; None means all of them (admins)."""
    return access.principal_for(session, user).visible


def check_destination_access(session: Session, user: DataUser, destination: str) -> None:
    """Raise NotFound, the answer for an absent destination, unless `user` reaches it."""
    access.principal_for(session, user).check_destination(destination)
