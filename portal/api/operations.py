"""Operations on the dissemination engine: they reach running schedulers within seconds.

`POST /destinations/{name}/operations/{hold|restart|clean-expired}` and
`POST /transfers/{id}/operations/{requeue|stop|interrupt|schedule-now|priority|extend|delete}`
(admins only) answer 202 once the destination's scheduler has the order;
`POST /transfers/operations/{operation}?id=…&id=…` sends one operation to a selection.

The console's buttons post their forms to these same routes (logged in by its session
cookie, see `deps`): a form gets a 303 back to its page, with what was done or refused.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.datastructures import FormData
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, WithJsonSchema

from ecpds.core.dispatch import OperationError, TemporalDispatcher, check_transfer_operation
from ecpds.core.engine import DESTINATION_OPERATIONS, Operation
from ecpds.portal.api.deps import AdminDep, ApiState, StateDep, console_form
from ecpds.portal.api.errors import refusals
from ecpds.portal.session import back_to

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


class Refused(BaseModel):
    transfer: int
    status: int
    detail: str


class SelectionAccepted(BaseModel):
    """What a selection's operation did: the transfers that got it, and those refused."""

    operation: Operation
    value: int | None = None
    sent: list[int]
    refused: list[Refused]


def _back(form: FormData, message: str) -> RedirectResponse:
    """A console form's answer: its page again (the form's `next`), showing `message`."""
    return back_to(str(form.get("next", "/")), message)


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
    response_model=Accepted,
    responses=refusals(404, 409, 503),
)
async def destination_operation(
    request: Request,
    name: str,
    operation: DestinationOperation,
    state: StateDep,
    _admin: AdminDep,
    immediate: Annotated[bool, Query(description="restart: interrupt running transfers")] = False,
) -> Any:
    form = console_form(request)
    try:
        if operation not in DESTINATION_OPERATIONS:
            raise OperationError(f"{operation} applies to a transfer, not to a destination", 422)
        await engine_dispatcher(state).operate_destination(name, operation, immediate=immediate)
    except OperationError as exc:
        if form is not None:
            return _back(form, str(exc))
        raise HTTPException(exc.status, str(exc)) from None
    if form is not None:
        return _back(form, f"{operation} sent to {name}")
    return Accepted(operation=operation, destination=name, immediate=immediate)


@router.post(
    "/transfers/operations/{operation}",
    status_code=202,
    response_model=SelectionAccepted,
    responses=refusals(422, 503),
)
async def selection_operation(
    request: Request,
    operation: TransferOperation,
    state: StateDep,
    _admin: AdminDep,
    id: Annotated[list[int] | None, Query(description="the transfers, one `id=` each")] = None,
    value: Annotated[
        int | None, Query(description="priority: the new priority; extend: seconds to add")
    ] = None,
) -> Any:
    """One operation for each transfer of a selection; each refusal is told, not fatal."""
    form = console_form(request)
    try:
        if form is not None:
            id, value = _selection_of(form, operation)
        check_transfer_operation(operation, value)
        if not id:
            raise OperationError("no transfer selected", 422)
        dispatcher = engine_dispatcher(state)
    except OperationError as exc:
        if form is not None:
            return _back(form, str(exc))
        raise HTTPException(exc.status, str(exc)) from None
    sent, refused = [], []
    for transfer in dict.fromkeys(id):  # each once, in the order given
        try:
            await dispatcher.operate_transfer(transfer, operation, value=value)
            sent.append(transfer)
        except OperationError as exc:
            refused.append(Refused(transfer=transfer, status=exc.status, detail=str(exc)))
    if form is not None:
        what = f"{operation} {value}" if value is not None else str(operation)
        told = f"{what} sent for {len(sent)} transfer{'s' if len(sent) != 1 else ''}"
        return _back(form, "; ".join([told, *(r.detail for r in refused)]))
    return SelectionAccepted(operation=operation, value=value, sent=sent, refused=refused)


def _selection_of(form: FormData, operation: Operation) -> tuple[list[int], int | None]:
    """The transfers (`id` fields) and the value a console form sends; fields that are
    not whole numbers select nothing."""
    ids = [i for i in (_whole(str(v)) for v in form.getlist("id")) if i is not None]
    if operation not in (Operation.PRIORITY, Operation.EXTEND):
        return ids, None
    typed = str(form.get("value", "")).strip()
    value = _whole(typed)
    if value is None:
        wanted = "from 0 (urgent) to 99" if operation is Operation.PRIORITY else "of seconds"
        raise OperationError(f"{operation} {typed!r} is not a number {wanted}", 422)
    return ids, value


def _whole(text: str) -> int | None:
    """A form field's whole number, None if it is not one (only ASCII digits: int() takes
    others that isdigit() lets through)."""
    return int(text) if text.isascii() and text.isdigit() else None


@router.post(
    "/transfers/{id}/operations/{operation}",
    status_code=202,
    response_model=Accepted,
    responses=refusals(404, 409, 503),
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
