"""The console's inventory pages: data files, hosts, data users and policies, acquisition runs.

Read-only; each query goes through the caller's visible destinations (data users see what
reaches their destinations, and users and policies not at all) and ends with a LIMIT.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from ecpds.core import access, acquisition, catalog
from ecpds.core.errors import Invalid, NotFound
from ecpds.core.models import Host, HostKind, HostPublic
from ecpds.portal.console.pages import (
    PAGE_SIZE,
    RECENT,
    Caller,
    api_state,
    form_time,
    one_page,
    page_query,
    show_page,
)

router = APIRouter(include_in_schema=False)


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
        rows, more = one_page(
            partial(
                catalog.list_data_files,
                session,
                destinations=caller.visible,
                contains=name or None,
                group=group or None,
                arrived_since=form_time("since", since),
                arrived_until=form_time("until", until),
            ),
            page,
        )
        return {
            "rows": rows,
            "more": more,
            "page": page,
            "name": name,
            "group": group,
            "since": since,
            "until": until,
            "query": page_query(name=name, group=group, since=since, until=until),
        }

    return show_page(request, "datafiles.html", build)


@router.get("/datafiles/{id}")
def data_file_page(request: Request, id: str) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        data_file = catalog.get_data_file(session, id=id)
        transfers = catalog.list_transfers(
            session, destinations=caller.visible, data_file_id=id, limit=PAGE_SIZE
        )
        if caller.visible is not None and not transfers:
            raise NotFound(f"unknown data file {id!r}")
        return {"file": data_file, "transfers": catalog.transfers_public(session, transfers)}

    return show_page(request, "datafile.html", build)


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
    box = api_state(request).box

    def build(session: Session, caller: Caller) -> dict[str, Any]:
        shown, more = one_page(
            partial(catalog.list_hosts, session, destinations=caller.visible), page
        )
        users = catalog.host_destinations(session, hosts=shown, destinations=caller.visible)
        return {
            "rows": [
                (_shown(catalog.host_public(session, h, box=box)), users[h.id or 0]) for h in shown
            ],
            "more": more,
            "page": page,
            "query": page_query(),
        }

    return show_page(request, "hosts.html", build)


@router.get("/hosts/{name}")
def host_page(request: Request, name: str) -> HTMLResponse:
    box = api_state(request).box

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
            "transfers": catalog.transfers_public(session, transfers),
            "runs": runs,
            "acquisition": host.kind == HostKind.ACQUISITION,
        }

    return show_page(request, "host.html", build)


# --- data users and policies (admins only) ----------------------------------------------


@router.get("/users")
def users_page(request: Request, page: Annotated[int, Query(ge=1)] = 1) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        _admins_only(caller, "data users")
        users, more = one_page(partial(catalog.list_users, session), page)
        return {
            "rows": [
                (catalog.user_public(session, u), catalog.user_policies(session, user=u))
                for u in users
            ],
            "more": more,
            "page": page,
            "query": page_query(),
        }

    return show_page(request, "users.html", build)


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

    return show_page(request, "user.html", build)


@router.get("/policies")
def policies_page(request: Request) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        _admins_only(caller, "policies")
        return {"rows": [catalog.policy_public(session, p) for p in catalog.list_policies(session)]}

    return show_page(request, "policies.html", build)


@router.get("/policies/{name}")
def policy_page(request: Request, name: str) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        _admins_only(caller, "policies")
        return {"policy": catalog.policy_public(session, catalog.get_policy(session, name=name))}

    return show_page(request, "policy.html", build)


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
        rows, more = one_page(
            partial(
                acquisition.list_runs,
                session,
                host=host or None,
                destinations=caller.reaching(destination),
                status=status or None,
            ),
            page,
        )
        return {
            "rows": rows,
            "more": more,
            "page": page,
            "destination": destination,
            "host": host,
            "status": status,
            "statuses": acquisition.RUN_STATUSES,
            "query": page_query(destination=destination, host=host, status=status),
        }

    return show_page(request, "runs.html", build)


@router.get("/acquisition/{id}")
def run_page(request: Request, id: int) -> HTMLResponse:
    def build(session: Session, caller: Caller) -> dict[str, Any]:
        run = acquisition.get_run(session, id=id)
        if caller.visible is not None and run.destination not in caller.visible:
            raise NotFound(f"unknown acquisition run {id}")
        files = acquisition.run_files(session, run_id=id, limit=PAGE_SIZE + 1)
        return {"run": run, "files": files[:PAGE_SIZE], "more": len(files) > PAGE_SIZE}

    return show_page(request, "run.html", build)
