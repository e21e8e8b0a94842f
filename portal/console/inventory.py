"""The console's inventory pages: data files, hosts, data users and policies, acquisition runs.

Read-only; each query goes through the caller's visible destinations (data users see what
reaches their destinations, and users and policies not at all) and ends with a LIMIT.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from ecpds.core import access, acquisition, catalog
from ecpds.core.errors import Invalid, NotFound
from ecpds.core.models import Host, HostKind, HostPublic
from ecpds.portal.console.routes import (
    PAGE_SIZE,
    RECENT,
    Caller,
    _page,
    _public,
    _state,
    form_time,
)

router = APIRouter(include_in_schema=False)


def _query(**values: Any) -> Any:
    """The link to page `p` of a list with these filters (empty ones left out)."""
    return lambda p: urlencode({k: v for k, v in (values | {"page": p}).items() if v})


def _admins_only(caller: Caller, what: str) -> None:
    if not caller.user.admin:
        raise NotFound(f"the {what} are for admins")


def url_without_password(url: str) -> str:
    """A host URL as shown: any password in it dropped (they belong in the credentials)."""
    parts = urlsplit(url)
    userinfo, at, where = parts.netloc.rpartition("@")
    if ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}{at}{where}"))


# --- data files -------------------------------------------------------------------------


@router.get("/datafiles")
def data_files_page(
    request: Request,
    name: str = "",
    group: str = "",
    since: str = "",
    until: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        # One row more than a page says whether there is a next one, without a count.
        rows = catalog.list_data_files(
            session,
            destinations=caller.visible,
            contains=name or None,
            group=group or None,
            arrived_since=form_time("since", since),
            arrived_until=form_time("until", until),
            limit=PAGE_SIZE + 1,
            offset=(page - 1) * PAGE_SIZE,
        )
        return {
            "rows": rows[:PAGE_SIZE],
            "more": len(rows) > PAGE_SIZE,
            "page": page,
            "name": name,
            "group": group,
            "since": since,
            "until": until,
            "query": _query(name=name, group=group, since=since, until=until),
        }

    return _page(request, "datafiles.html", build)


@router.get("/datafiles/{id}")
def data_file_page(request: Request, id: str) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        data_file = catalog.get_data_file(session, id=id)
        transfers = catalog.list_transfers(
            session, destinations=caller.visible, data_file_id=id, limit=PAGE_SIZE
        )
        if caller.visible is not None and not transfers:
            raise NotFound(f"unknown data file {id!r}")
        return {"file": data_file, "transfers": _public(session, transfers)}

    return _page(request, "datafile.html", build)


# --- hosts ------------------------------------------------------------------------------


def _visible_host(session: Session, caller: Caller, name: str) -> tuple[Host, list[str]]:
    """The host and the caller's destinations that use it; a data user reaches a host
    only through one of its destinations (and gets no suggestion of other names)."""
    if caller.visible is None:
        host = catalog.get_host(session, name=name)
    else:
        found = catalog.find_host(session, name=name)
        if found is None:
            raise NotFound(f"unknown host {name!r}")
        host = found
    uses = catalog.host_destinations(session, hosts=[host], destinations=caller.visible)
    if caller.visible is not None and not uses[host.id or 0]:
        raise NotFound(f"unknown host {name!r}")
    return host, uses[host.id or 0]


def _shown(host: HostPublic) -> HostPublic:
    return host.model_copy(update={"url": url_without_password(host.url)})


@router.get("/hosts")
def hosts_page(request: Request, page: Annotated[int, Query(ge=1)] = 1) -> HTMLResponse:
    box = _state(request).box

    def build(session: Session, caller: Caller) -> dict[str, Any]:
        hosts = catalog.list_hosts(
            session,
            destinations=caller.visible,
            limit=PAGE_SIZE + 1,
            offset=(page - 1) * PAGE_SIZE,
        )
        shown = hosts[:PAGE_SIZE]
        users = catalog.host_destinations(session, hosts=shown, destinations=caller.visible)
        return {
            "rows": [
                (_shown(catalog.host_public(session, h, box=box)), users[h.id or 0]) for h in shown
            ],
            "more": len(hosts) > PAGE_SIZE,
            "page": page,
            "query": _query(),
        }

    return _page(request, "hosts.html", build)


@router.get("/hosts/{name}")
def host_page(request: Request, name: str) -> HTMLResponse:
    box = _state(request).box

    def build(session: Session, caller: Caller) -> dict[str, Any]:
        host, destinations = _visible_host(session, caller, name)
        runs = (
            acquisition.list_runs(
                session, host=host.name, destinations=caller.visible, limit=RECENT
            )
            if host.kind == HostKind.ACQUISITION
            else []
        )
        transfers = catalog.list_transfers(
            session, destinations=caller.visible, host_id=host.id, limit=RECENT
        )
        return {
            "host": _shown(catalog.host_public(session, host, box=box)),
            "destinations": destinations,
            "transfers": _public(session, transfers),
            "runs": runs,
            "acquisition": host.kind == HostKind.ACQUISITION,
        }

    return _page(request, "host.html", build)


# --- data users and policies (admins only) ----------------------------------------------


@router.get("/users")
def users_page(request: Request, page: Annotated[int, Query(ge=1)] = 1) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        _admins_only(caller, "data users")
        users = catalog.list_users(session, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        return {
            "rows": [
                (catalog.user_public(session, u), catalog.user_policies(session, user=u))
                for u in users[:PAGE_SIZE]
            ],
            "more": len(users) > PAGE_SIZE,
            "page": page,
            "query": _query(),
        }

    return _page(request, "users.html", build)


@router.get("/users/{name}")
def user_page(request: Request, name: str) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        _admins_only(caller, "data users")
        user = catalog.get_user(session, name=name)
        return {
            "user": catalog.user_public(session, user),
            "policies": catalog.user_policies(session, user=user),
            "reaches": "every destination"
            if user.admin
            else ", ".join(access.user_destinations(session, user=user)) or "none",
        }

    return _page(request, "user.html", build)


@router.get("/policies")
def policies_page(request: Request) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        _admins_only(caller, "policies")
        return {"rows": [catalog.policy_public(session, p) for p in catalog.list_policies(session)]}

    return _page(request, "policies.html", build)


@router.get("/policies/{name}")
def policy_page(request: Request, name: str) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        _admins_only(caller, "policies")
        return {"policy": catalog.policy_public(session, catalog.get_policy(session, name=name))}

    return _page(request, "policy.html", build)


# --- acquisition runs -------------------------------------------------------------------


@router.get("/acquisition")
def runs_page(
    request: Request,
    destination: str = "",
    host: str = "",
    status: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        if status and status not in acquisition.RUN_STATUSES:
            raise Invalid(
                f"unknown run status {status!r}: use {', '.join(acquisition.RUN_STATUSES)}"
            )
        allowed = caller.visible
        if destination:
            allowed = [destination] if allowed is None or destination in allowed else []
        rows = acquisition.list_runs(
            session,
            host=host or None,
            destinations=allowed,
            status=status or None,
            limit=PAGE_SIZE + 1,
            offset=(page - 1) * PAGE_SIZE,
        )
        return {
            "rows": rows[:PAGE_SIZE],
            "more": len(rows) > PAGE_SIZE,
            "page": page,
            "destination": destination,
            "host": host,
            "status": status,
            "statuses": acquisition.RUN_STATUSES,
            "query": _query(destination=destination, host=host, status=status),
        }

    return _page(request, "runs.html", build)


@router.get("/acquisition/{id}")
def run_page(request: Request, id: int) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        run = acquisition.get_run(session, id=id)
        if caller.visible is not None and run.destination not in caller.visible:
            raise NotFound(f"unknown acquisition run {id}")
        files = acquisition.run_files(session, run_id=id, limit=PAGE_SIZE + 1)
        return {"run": run, "files": files[:PAGE_SIZE], "more": len(files) > PAGE_SIZE}

    return _page(request, "run.html", build)
