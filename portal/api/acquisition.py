"""Acquisition: dry runs, run-now, pause and resume of a host's discovery schedule, and
the record of its runs (admins only).

Host and destination changes call `sync_schedules` after their commit, so that each
acquisition host's Temporal Schedule (or MQTT subscription) follows the catalog.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import anyio.from_thread
from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel

from ecpds.core import acquisition
from ecpds.core.dispatch import TemporalDispatcher, best_effort, reaching_engine
from ecpds.core.errors import Unavailable
from ecpds.core.protocols import ProtocolError
from ecpds.portal.api.deps import AdminDep, ApiState, SessionDep, StateDep
from ecpds.portal.api.errors import refusals
from ecpds.workers.schedules import (
    operate_acquisition,
    sync_acquisition_schedules,
    wanted_schedules,
)
from ecpds.workers.subscriptions import ensure_subscriptions

router = APIRouter(prefix="/acquisition", tags=["acquisition"])

DestinationQuery = Annotated[
    str | None, Query(description="the destination, for a host in several host lists")
]


class Accepted(BaseModel):
    operation: str
    host: str
    destination: str


def schedules_before(state: ApiState) -> set[str]:
    """The discovery schedules the catalog asks for now, before a change."""
    return set(wanted_schedules(state.engine))


async def resync(state: ApiState, forget: Iterable[str] = ()) -> None:
    """After a committed change: bring the discovery schedules and the MQTT subscriptions
    in line (best effort: a worker starting does it too)."""
    dispatcher = state.dispatcher
    if not isinstance(dispatcher, TemporalDispatcher):
        return

    async def call() -> None:
        await sync_acquisition_schedules(
            dispatcher.client, state.engine, dispatcher.task_queue, forget=forget
        )
        await ensure_subscriptions(dispatcher.client, state.engine, dispatcher.task_queue)

    await best_effort(call(), what="acquisition schedules", later="a worker start syncs them")


def sync_schedules(state: ApiState, forget: Iterable[str] = ()) -> None:
    """`resync` from a route's worker thread."""
    anyio.from_thread.run(resync, state, forget)


def _dispatcher(state: ApiState) -> TemporalDispatcher:
    dispatcher = state.dispatcher
    if not isinstance(dispatcher, TemporalDispatcher):
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the workflow engine is not connected: start Temporal and the worker",
        )
    return dispatcher


@router.get("/runs")
def list_runs(
    session: SessionDep,
    _: AdminDep,
    host: Annotated[str | None, Query(description="only this host's runs")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[acquisition.RunPublic]:
    """The latest runs, newest first."""
    return [
        acquisition.run_public(r) for r in acquisition.list_runs(session, host=host, limit=limit)
    ]


@router.get(
    "/{host}/test",
    responses=refusals(404, 409, 422) | {502: {"description": "listing failed"}},
)
def test_host(
    host: str, state: StateDep, _: AdminDep, destination: DestinationQuery = None
) -> acquisition.DryRun:
    """A dry run: what a run would fetch now, and the rule and reason of each file skipped."""
    try:
        return acquisition.dry_run(state.engine, state.box, host=host, destination=destination)
    except ProtocolError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, str(exc)) from None


# Each operation on the schedule is a route of its own: a path parameter would also
# match the dry run's path.
OPERATIONS = {
    "run": "Run a discovery of the host now (skipped while one runs).",
    "pause": "Pause the host's discovery schedule.",
    "resume": "Resume the host's discovery schedule.",
}


def _operation_route(operation: str) -> None:
    async def operate(
        host: str,
        session: SessionDep,
        state: StateDep,
        _: AdminDep,
        destination: DestinationQuery = None,
    ) -> Accepted:
        _, dest = acquisition.host_destination(session, host=host, destination=destination)
        dispatcher = _dispatcher(state)
        try:
            async with reaching_engine():
                await operate_acquisition(dispatcher.client, dest.name, host, operation)
        except Unavailable as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
        return Accepted(operation=operation, host=host, destination=dest.name)

    router.add_api_route(
        f"/{{host}}/{operation}",
        operate,
        methods=["POST"],
        status_code=202,
        responses=refusals(404, 409, 422, 503),
        name=f"acquisition_{operation}",
        summary=OPERATIONS[operation].removesuffix("."),
        description=OPERATIONS[operation],
    )


for _operation in OPERATIONS:
    _operation_route(_operation)
