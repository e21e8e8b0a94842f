"""The event log: every operation done through the REST API (who, what, when, result),
recorded in the catalog as it ends, and `GET /events` to read it back."""

from __future__ import annotations

import re
import time
from typing import Annotated

import anyio
from fastapi import APIRouter, Query
from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.models import IsoTime, OperationEvent
from ecpds.portal.api.deps import AdminDep, SessionDep

router = APIRouter(prefix="/events", tags=["events"])

OPERATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The data plane: uploads and fetch requests are products, not operations.
DATA_PLANE = re.compile(r"^/api/v1/destinations/[^/]+/(files|sources)$|^/data/")


class OperationLog:
    """ASGI middleware: records each operation's caller, method, path, status, duration."""

    def __init__(self, app: ASGIApp, engine: Engine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in OPERATIONS
            or DATA_PLANE.match(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        answered = {"status": 500}
        began = time.perf_counter()

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            caller = scope.get("state", {}).get("caller", "-")
            event = OperationEvent(
                user=str(caller)[:128],
                method=scope["method"],
                path=scope["path"][:1000],
                status=answered["status"],
                seconds=round(time.perf_counter() - began, 6),
            )
            await anyio.to_thread.run_sync(self._write, event)

    def _write(self, event: OperationEvent) -> None:
        with session_scope(self.engine) as session:
            session.add(event)


@router.get("")
def list_events(
    session: SessionDep,
    _: AdminDep,
    user: Annotated[str | None, Query(description="only this caller's")] = None,
    since: Annotated[IsoTime | None, Query(description="only those at or after this time")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[OperationEvent]:
    """The latest operations first."""
    return list(catalog.list_events(session, user=user, since=since, limit=limit))
