"""Operations on the dissemination engine: they reach running schedulers within seconds.

`POST /destinations/{name}/operations/{hold|restart|clean-expired}` and
`POST /transfers/{id}/operations/{requeue|stop|interrupt|schedule-now|priority|extend|delete}`
(admins only) answer 202 once the destination's scheduler has the order.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, WithJsonSchema

from ecpds.core.dispatch import OperationError, TemporalDispatcher
from ecpds.core.engine import DESTINATION_OPERATIONS, Operation
from ecpds.portal.api.deps import AdminDep, ApiState, StateDep
from ecpds.portal.api.errors import refusals

router = APIRouter(tags=["operations"])


def _one_of(operations: list[Operation]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": [op.value for op in operations]})


# The operations that apply to each kind; the other kind's are refused with 422.
DestinationOperation = Annotated[
    Operation, _one_of([op for op in Operation if op in DESTINATION_OPERATIONS])
]
TransferOperation = Annotated[
    Operation, _one_of([op for op in Operation if op not in DESTINATION_OPERATIONS])
]


class Accepted(BaseModel):
    operation: Operation
    destination: str | None = None
    transfer: int | None = None
    value: int | None = None
    immediate: bool = False


def engine_dispatcher(state: ApiState) -> TemporalDispatcher:
    """The dispatcher that reaches the schedulers (REST and console operations); 503 without."""
    dispatcher = state.dispatcher
    if not isinstance(dispatcher, TemporalDispatcher):
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the dissemination engine is not connected: start Temporal and the worker",
        )
    return dispatcher


@router.post(
    "/destinations/{name}/operations/{operation}",
    status_code=202,
    responses=refusals(404, 409, 503),
)
async def destination_operation(
    name: str,
    operation: DestinationOperation,
    state: StateDep,
    _admin: AdminDep,
    immediate: Annotated[bool, Query(description="restart: interrupt running transfers")] = False,
) -> Accepted:
    try:
        await engine_dispatcher(state).operate_destination(name, operation, immediate=immediate)
    except OperationError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return Accepted(operation=operation, destination=name, immediate=immediate)


@router.post(
    "/transfers/{id}/operations/{operation}", status_code=202, responses=refusals(404, 409, 503)
)
async def transfer_operation(
    id: int,
    operation: TransferOperation,
    state: StateDep,
    _admin: AdminDep,
    value: Annotated[
        int | None, Query(description="priority: the new priority; extend: seconds to add")
    ] = None,
) -> Accepted:
    if operation in DESTINATION_OPERATIONS:
        raise HTTPException(422, f"{operation} applies to a destination, not to a transfer")
    try:
        await engine_dispatcher(state).operate_transfer(id, operation, value=value)
    except OperationError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return Accepted(operation=operation, transfer=id, value=value)
