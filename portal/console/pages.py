"""What every console page shares: who is looking (`Caller`), the page runner, rendering,
the search forms' times and the list pages' paging and links."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlmodel import Session

from ecpds.core import access
from ecpds.core.errors import EcpdsError, Invalid
from ecpds.core.models import DataUser
from ecpds.portal.api.deps import ApiState
from ecpds.portal.console import units
from ecpds.portal.session import SESSION_COOKIE, Signer, session_user

PAGE_SIZE = 50
RECENT = 20

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters.update(units.FILTERS)

Row = TypeVar("Row")


@dataclass
class Caller:
    """Who is looking at a page: the user, what it reaches, and its session's CSRF token."""

    user: DataUser
    principal: access.Principal
    csrf: str

    @property
    def visible(self) -> list[str] | None:
        return self.principal.visible

    def reaching(self, destination: str) -> list[str] | None:
        """The destinations a list filtered on `destination` ("" for none) may show: only
        that one, and none when the caller does not see it."""
        if not destination:
            return self.visible
        return [destination] if self.visible is None or destination in self.visible else []


class LoginNeeded(Exception):
    """No valid session: the page answers with a redirect to the login form."""


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def signer(request: Request) -> Signer:
    return Signer(api_state(request).box)


def session_caller(request: Request, session: Session) -> Caller:
    """The caller of the request's session cookie; LoginNeeded without a valid one."""
    found = session_user(api_state(request).box, session, request.cookies.get(SESSION_COOKIE))
    if found is None:
        raise LoginNeeded
    user, login = found
    return Caller(user, access.principal_for(session, user), login.csrf)


def render(
    request: Request, template: str, caller: Caller | None, code: int = 200, **context: Any
) -> HTMLResponse:
    context |= {"caller": caller, "code": code, "message": request.query_params.get("message")}
    return templates.TemplateResponse(request, template, context, status_code=code)


def show_page(
    request: Request, template: str, build: Callable[[Session, Caller], dict[str, Any]]
) -> HTMLResponse:
    """A page for the logged-in caller: `build(session, caller)` gives its context."""
    with Session(api_state(request).engine) as session:
        try:
            caller = session_caller(request, session)
        except LoginNeeded:
            return RedirectResponse(f"/login?{urlencode({'next': request.url.path})}", 303)  # type: ignore[return-value]
        try:
            return render(request, template, caller, **build(session, caller))
        except EcpdsError as exc:
            return render(request, "error.html", caller, exc.status, error=str(exc))


def form_time(field: str, value: str) -> datetime | None:
    """A time from a search form (UTC when it names no zone); "" means no bound."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(f"{field}: {value!r} is not a time: use e.g. 2030-01-01T06:00") from None


def one_page(fetch: Callable[..., Sequence[Row]], page: int) -> tuple[list[Row], bool]:
    """Page `page` of a list read by `fetch(limit=, offset=)`, and whether a next page
    exists: one row more than a page says so, without a count."""
    rows = fetch(limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
    return list(rows[:PAGE_SIZE]), len(rows) > PAGE_SIZE


def page_query(**filters: Any) -> Callable[[int], str]:
    """The query string of page `p` of a list with these filters (empty ones left out)."""
    return lambda p: urlencode({k: v for k, v in (filters | {"page": p}).items() if v})
