"""The web console: server-rendered pages at `/` for operators and data users.

Logins are the REST API's (a data user's password, checked by the access layer), kept in
a signed session cookie. Every query goes through `ecpds.core.access` (admins see every
destination, a data user its own) and `ecpds.core.catalog`. The operation buttons are
forms that post to the REST API's own operation routes (`/api/v1/.../operations/...`),
which take the session cookie with the form's CSRF token and answer a form with a 303
back to its page.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from ecpds.core import access, arrivals, catalog
from ecpds.core.engine import Operation, transfer_workflow_id
from ecpds.core.errors import NotFound, Unauthenticated
from ecpds.core.models import (
    FINAL_STATUSES,
    QUEUED_STATUSES,
    DataTransferPublic,
    Destination,
    DestinationStatus,
    TransferStatus,
)
from ecpds.portal.console import units
from ecpds.portal.console.pages import (
    PAGE_SIZE,
    RECENT,
    Caller,
    LoginNeeded,
    api_state,
    form_time,
    one_page,
    page_query,
    render,
    session_caller,
    show_page,
    signer,
)
from ecpds.portal.session import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    local_path,
    same_token,
)

HOST_HISTORY = timedelta(hours=6)  # how far back a host's failed transfers count
RECENT_RUNS = 5  # acquisition runs listed on the dashboard
BUSIEST = 5  # destinations charted on /arrivals unless one is chosen
DESTINATION_BUTTONS = (Operation.HOLD, Operation.RESTART, Operation.CLEAN_EXPIRED)
# The buttons under /transfers, for a selection; priority takes the value field (0..99).
BULK_OPERATIONS = (
    Operation.REQUEUE,
    Operation.STOP,
    Operation.INTERRUPT,
    Operation.SCHEDULE_NOW,
    Operation.PRIORITY,
)

router = APIRouter(include_in_schema=False)


def _cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, httponly=True, secure=True, samesite="lax", path="/"
    )


def _check_post(request: Request, caller: Caller, form: Any) -> None:
    if not same_token(form.get("csrf"), caller.csrf):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")


async def _posting_caller(request: Request) -> tuple[Caller, Any]:
    """The caller of a POST and its form, after the CSRF check."""
    form = await request.form()

    def load() -> Caller:
        with Session(api_state(request).engine) as session:
            return session_caller(request, session)

    try:
        caller = await run_in_threadpool(load)
    except LoginNeeded:
        raise HTTPException(401, "log in first: the session has expired") from None
    _check_post(request, caller, form)
    return caller, form


# --- login ------------------------------------------------------------------------------


def _login_form(request: Request, status: int = 200, error: str | None = None) -> HTMLResponse:
    cookie, token = signer(request).new_login_token()
    target = request.query_params.get("next", "/")
    page = render(
        request, "login.html", None, status, csrf=token, error=error, next=local_path(target)
    )
    _cookie(page, LOGIN_COOKIE, cookie, 3600)
    return page


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return _login_form(request)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    if not same_token(
        form.get("csrf"), signer(request).login_token(request.cookies.get(LOGIN_COOKIE))
    ):
        raise HTTPException(403, "missing or wrong CSRF token: reload the login page")
    name, password = str(form.get("username", "")), str(form.get("password", ""))

    def check() -> int:
        with Session(api_state(request).engine) as session:
            user = access.password_user(session, name=name, password=password)
            assert user.id is not None
            return user.id

    try:
        user_id = await run_in_threadpool(check)  # argon2: off the event loop
    except Unauthenticated as exc:
        return _login_form(request, 401, str(exc))
    cookie, _ = signer(request).new_session(user_id)
    answer = RedirectResponse(local_path(str(form.get("next", "/"))), 303)
    _cookie(answer, SESSION_COOKIE, cookie, SESSION_SECONDS)
    answer.delete_cookie(LOGIN_COOKIE, path="/")
    return answer


@router.post("/logout")
async def logout(request: Request) -> Response:
    await _posting_caller(request)
    answer = RedirectResponse("/login", 303)
    answer.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    return answer


# --- dashboard --------------------------------------------------------------------------


@router.get("/")
def dashboard(request: Request) -> HTMLResponse:
    snapshots = api_state(request).snapshots

    def build(session: Session, caller: Caller) -> dict[str, Any]:
        # The counts come from the catalog's snapshot (a few seconds old at most, shared
        # by every user and /metrics); only the recent failures are read for this page.
        counts = snapshots.current().view(caller.visible)
        transfers = counts.by_status()
        runs: dict[str, int] = {}
        for (_, status), count in counts.runs.items():
            runs[status] = runs.get(status, 0) + count
        return {
            "counts": counts,
            "destinations": counts.destinations_by_status(),
            "transfers": transfers,
            "waiting": sum(transfers.get(s, 0) for s in QUEUED_STATUSES),
            "failures": catalog.transfers_public(
                session,
                catalog.list_transfers(
                    session, destinations=caller.visible, status=TransferStatus.FAIL, limit=RECENT
                ),
            ),
            "backlog": sum(counts.backlog.values()),
            "overdue": [s for s in counts.expected if s.state in ("late", "missing")],
            "hours": counts.per_hour(),
            "runs": runs,
            "recent_runs": counts.recent_runs[:RECENT_RUNS],
            "store": counts.store,
        }

    return show_page(request, "dashboard.html", build)


# --- arrivals and the event log -------------------------------------------------------


@router.get("/arrivals")
def arrivals_page(request: Request, destination: str = "") -> HTMLResponse:
    snapshots = api_state(request).snapshots

    def build(session: Session, caller: Caller) -> dict[str, Any]:
        expected = catalog.list_expected(session, destinations=caller.visible)
        counts = snapshots.current().view(caller.visible)
        if destination:
            caller.principal.check_destination(destination)
            catalog.get_destination(session, name=destination)  # NotFound: a clear line
            charted = [destination]
        else:
            charted = counts.busiest(BUSIEST)
        return {
            "rows": arrivals.statuses(session, expected),
            "counts": counts,
            "destination": destination,
            "charts": [(name, counts.per_hour(name)) for name in charted],
        }

    return show_page(request, "arrivals.html", build)


@router.get("/events")
def events_page(request: Request, user: str = "") -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        if not caller.user.admin:
            raise NotFound("the event log is for admins")
        rows = catalog.list_events(session, user=user or None, limit=RECENT * 10)
        return {"rows": rows, "user": user}

    return show_page(request, "events.html", build)


# --- destinations -----------------------------------------------------------------------


@router.get("/destinations")
def destinations_page(
    request: Request,
    name: str = "",
    status: DestinationStatus | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        filters = {"names": caller.visible, "contains": name or None, "status": status}
        total = catalog.count_destinations(session, **filters)
        rows = catalog.list_destinations(
            session, **filters, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
        )
        return {
            "rows": rows,
            "total": total,
            "page": page,
            "pages": max(1, -(-total // PAGE_SIZE)),
            "name": name,
            "status": status,
            "statuses": list(DestinationStatus),
            "query": page_query(name=name, status=status),
        }

    return show_page(request, "destinations.html", build)


@router.get("/destinations/{name}")
def destination_page(request: Request, name: str) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        destination = _visible_destination(session, caller, name)
        hosts = catalog.host_states(
            session, destination=destination, since=datetime.now(UTC) - HOST_HISTORY
        )
        return {
            "destination": destination,
            "hosts": hosts,
            "history": units.duration(HOST_HISTORY.total_seconds()),
            "traffic": catalog.traffic_host(hosts),
            "waiting": catalog.waiting_transfers(session, destination=destination),
            "rows": _running(session, destination),
            "errors": catalog.transfers_public(
                session,
                catalog.list_transfers(session, destinations=[name], with_error=True, limit=RECENT),
            ),
            "buttons": DESTINATION_BUTTONS,
        }

    return show_page(request, "destination.html", build)


@router.get("/destinations/{name}/running")
def destination_running(request: Request, name: str) -> HTMLResponse:
    """The destination page's running transfers with their progress, for console.js."""

    def build(session: Session, caller: Caller) -> dict[str, Any]:
        destination = _visible_destination(session, caller, name)
        return {"rows": _running(session, destination), "select": False}

    return show_page(request, "_transfers.html", build)


def _visible_destination(session: Session, caller: Caller, name: str) -> Destination:
    caller.principal.check_destination(name)
    return catalog.get_destination(session, name=name)


def _running(session: Session, destination: Destination) -> list[Any]:
    running = catalog.list_transfers(
        session, destinations=[destination.name], status=TransferStatus.EXEC, limit=PAGE_SIZE
    )
    return catalog.transfers_public(session, running)


# --- transfers --------------------------------------------------------------------------


@router.get("/transfers")
def transfers_page(
    request: Request,
    destination: str = "",
    status: TransferStatus | None = None,
    name: str = "",
    file: str = "",
    since: str = "",
    until: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        rows, more = one_page(
            partial(
                catalog.list_transfers,
                session,
                destinations=caller.reaching(destination),
                status=status,
                target=name or None,
                data_file_id=file or None,
                since=form_time("since", since),
                until=form_time("until", until),
            ),
            page,
        )
        return {
            "rows": catalog.transfers_public(session, rows),
            "more": more,
            "page": page,
            "destination": destination,
            "status": status,
            "name": name,
            "file": file,
            "since": since,
            "until": until,
            "statuses": list(TransferStatus),
            "buttons": BULK_OPERATIONS,
            "query": page_query(
                destination=destination,
                status=status,
                name=name,
                file=file,
                since=since,
                until=until,
            ),
        }

    return show_page(request, "transfers.html", build)


@router.get("/transfers/{id}")
def transfer_page(request: Request, id: int) -> HTMLResponse:
    settings = api_state(request).settings

    def build(session: Session, caller: Caller) -> dict[str, Any]:
        transfer = _visible_transfer(session, caller, id)
        workflow = transfer.workflow_id or transfer_workflow_id(transfer.destination, id)
        ui = (
            f"http://{settings.public_host}:{settings.temporal_ui_port}"
            f"/namespaces/{settings.temporal_namespace}/workflows/{workflow}"
        )
        timeline = sorted(
            (
                (when, what)
                for what, when in (
                    ("queued", transfer.queued),
                    ("scheduled", transfer.scheduled),
                    ("started", transfer.started),
                    ("last progress", transfer.progress_at),
                    ("retry not before", transfer.retry_at),
                    ("finished", transfer.finished),
                    ("expires", transfer.expires),
                )
                if when is not None
            ),
            key=lambda pair: pair[0],
        )
        return {
            "transfer": transfer,
            "timeline": timeline,
            "workflow": workflow,
            "ui": ui,
            "final": transfer.status in FINAL_STATUSES,
        }

    return show_page(request, "transfer.html", build)


def _visible_transfer(session: Session, caller: Caller, id: int) -> DataTransferPublic:
    transfer = catalog.transfer_public(session, catalog.get_transfer(session, id=id))
    if caller.visible is not None and transfer.destination not in caller.visible:
        raise NotFound(f"unknown transfer {id}")
    return transfer


@router.get("/transfers/{id}/progress")
def transfer_progress(request: Request, id: int) -> HTMLResponse:
    """The transfer page's live rows (status, bytes, rate, ETA), re-fetched by console.js."""

    def build(session: Session, caller: Caller) -> dict[str, Any]:
        return {"transfer": _visible_transfer(session, caller, id)}

    return show_page(request, "_progress.html", build)
