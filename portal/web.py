"""HTTPS data routes under `/data/`: browse (HTML or JSON), download (Range, ETag), upload, delete.

Logins are HTTP Basic (data user and password) or a bearer token, checked by the
portal's access layer; uploads are synchronous pushes through the virtual file system.
"""

import asyncio
import base64
import binascii
import html
import re
from collections.abc import AsyncIterator, Callable
from email.utils import format_datetime
from typing import Annotated, Protocol
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from sqlalchemy import Engine
from starlette.requests import ClientDisconnect

from ecpds.core.access import Principal
from ecpds.core.errors import EcpdsError, Unauthenticated
from ecpds.core.ingest import Dispatcher, IngestError
from ecpds.core.notifications import Doors
from ecpds.core.store import Store
from ecpds.portal.access import join_path, login_password, login_token, split_path
from ecpds.portal.api.errors import detail, refusals
from ecpds.portal.vfs import Download, Entry, PortalFS

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _error(exc: Exception) -> JSONResponse:
    return detail(getattr(exc, "status", 400), str(exc))


OCTETS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
LISTING = {
    "text/html": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
}
# What the data routes answer besides their success; all of them need a login.
READ_REFUSALS = refusals(400, 401, 403, 404) | {
    416: {"description": "The range is outside the file: Content-Range names its size"}
}
WRITE_REFUSALS = refusals(400, 401, 403, 404, 409, 413, 422, 429)


def _etag(entry: Entry) -> str:
    return f'"{entry.md5}"'


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) for a single `bytes=` range; None means the whole file."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # several ranges or another unit: answer with the whole file
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        raise _RangeNotSatisfiable(size)
    return start, end


class _RangeNotSatisfiable(Exception):
    status = 416

    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable: the file has {size} bytes")
        self.size = size


class Backing(Protocol):
    """Where the portal's file system comes from (the API state; the dispatcher comes late)."""

    engine: Engine
    store: Store
    dispatcher: Dispatcher | None

    @property
    def doors(self) -> Doors: ...


def data_router(backing: Callable[[], Backing]) -> APIRouter:
    """The `/data/` routes: `app.include_router(data_router(lambda: app.state.api))`."""

    def current() -> PortalFS:
        source = backing()
        return PortalFS(source.engine, source.store, source.dispatcher, source.doors)

    async def principal(request: Request) -> Principal:
        fs = current()
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        try:
            if scheme.lower() == "basic":
                try:
                    name, _, password = base64.b64decode(value).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError) as exc:
                    raise Unauthenticated("malformed Basic credentials") from exc
                return await asyncio.to_thread(login_password, fs.engine, name, password)
            if scheme.lower() == "bearer" and value:
                return await asyncio.to_thread(login_token, fs.engine, value.strip())
            raise Unauthenticated("log in with HTTP Basic or a bearer token")
        except EcpdsError as exc:
            headers = {"WWW-Authenticate": 'Basic realm="ecpds"'} if exc.status == 401 else None
            raise HTTPException(exc.status, str(exc), headers=headers) from exc

    User = Annotated[Principal, Depends(principal)]
    router = APIRouter(prefix="/data", tags=["data"])

    reading = {
        200: {
            "description": "the file's bytes, or a folder's listing",
            "content": OCTETS | LISTING,
        },
        206: {"description": "the requested range of the file's bytes", "content": OCTETS},
        304: {"description": "the file has not changed (If-None-Match)"},
    } | READ_REFUSALS

    @router.get("/{path:path}", response_class=Response, responses=reading)
    @router.head("/{path:path}", response_class=Response, responses=reading)
    async def get(path: str, request: Request, user: User) -> Response:
        fs = current()
        try:
            parts = split_path(path)
            entry = await asyncio.to_thread(fs.stat, user, parts)
            if entry.is_dir:
                entries = await asyncio.to_thread(fs.listdir, user, parts)
                if _wants_json(request):
                    return JSONResponse([_entry_json(e) for e in entries])
                return HTMLResponse(_listing_html(parts, entries))
            download = await asyncio.to_thread(fs.open_read, user, parts)
        except EcpdsError as exc:
            return _error(exc)
        return _download(download, request)

    @router.put(
        "/{path:path}",
        status_code=201,
        responses=WRITE_REFUSALS,
        openapi_extra={"requestBody": {"required": False, "content": OCTETS}},
    )
    async def put(path: str, request: Request, user: User) -> Response:
        fs = current()
        try:
            parts = split_path(path)
            result = await fs.upload(user, parts, _body(request))
        except (EcpdsError, IngestError) as exc:
            refused = _error(exc)
            # The body may be unread: closing keeps it from being parsed as the next request.
            refused.headers["Connection"] = "close"
            return refused
        except ClientDisconnect:
            return Response(status_code=400)
        data_file = result.data_file
        return JSONResponse(
            {
                "id": data_file.id,
                "name": data_file.name,
                "size": data_file.size,
                "md5": data_file.md5,
                "adler32": data_file.adler32,
                "transfers": result.transfer_ids,
            },
            status_code=201,
        )

    @router.delete("/{path:path}", status_code=204, responses=refusals(400, 401, 403, 404, 409))
    async def delete(path: str, user: User) -> Response:
        try:
            await asyncio.to_thread(current().delete, user, split_path(path))
        except EcpdsError as exc:
            return _error(exc)
        return Response(status_code=204)

    return router


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


def _wants_json(request: Request) -> bool:
    return request.query_params.get("format") == "json" or "application/json" in (
        request.headers.get("accept", "")
    )


def _entry_json(entry: Entry) -> dict[str, object]:
    if entry.is_dir:
        return {"name": entry.name, "type": "folder"}
    return {
        "name": entry.name,
        "type": "file",
        "size": entry.size,
        "modified": entry.mtime.isoformat() if entry.mtime else None,
        "md5": entry.md5,
        "status": entry.status,
    }


def _listing_html(parts: tuple[str, ...], entries: list[Entry]) -> str:
    here = join_path(parts)
    base = "/data" + (here if here.endswith("/") else here + "/")
    rows = []
    if parts:
        rows.append(f'<tr><td><a href="{html.escape(base)}..">..</a></td><td></td><td></td></tr>')
    for entry in entries:
        link = html.escape(base + quote(entry.name) + ("/" if entry.is_dir else ""))
        label = html.escape(entry.name + ("/" if entry.is_dir else ""))
        size = "" if entry.is_dir else str(entry.size)
        when = entry.mtime.strftime("%Y-%m-%d %H:%M:%S") if entry.mtime else ""
        rows.append(f'<tr><td><a href="{link}">{label}</a></td><td>{size}</td><td>{when}</td></tr>')
    title = html.escape(here)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>ecpds {title}</title></head>"
        f"<body><h1>{title}</h1><table><tr><th>name</th><th>size</th><th>modified (UTC)</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


def _download(download: Download, request: Request) -> Response:
    entry = download.entry
    headers = {
        "ETag": _etag(entry),
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if entry.mtime:
        headers["Last-Modified"] = format_datetime(entry.mtime, usegmt=True)
    inm = request.headers.get("if-none-match")
    if inm and (inm.strip() == "*" or _etag(entry) in [t.strip() for t in inm.split(",")]):
        return Response(status_code=304, headers=headers)
    try:
        wanted = _byte_range(request.headers.get("range"), download.size)
    except _RangeNotSatisfiable as exc:
        refused = _error(exc)
        refused.headers["Content-Range"] = f"bytes */{exc.size}"
        return refused
    status = 200
    start, end = 0, download.size
    if wanted is not None and request.headers.get("if-range", _etag(entry)) == _etag(entry):
        start, end = wanted
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{download.size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    return StreamingResponse(download.chunks(start, end), status_code=status, headers=headers)
