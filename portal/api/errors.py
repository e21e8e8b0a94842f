"""Error answers of the REST API: one shape, `{"detail": "<one line>"}`, for every refusal.

The handlers here answer it; `describe_errors` declares it in the OpenAPI description,
with the status codes each operation gives, so that the description matches the server.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_flat_params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from starlette.routing import Match

from ecpds.core.errors import EcpdsError, validation_message
from ecpds.core.ingest import IngestError
from ecpds.core.secrets import CredentialError
from ecpds.core.store import StoreError
from ecpds.portal.api.deps import admin_user, current_user


class Error(BaseModel):
    """Every error answer: what was wrong and what to do, in one line."""

    detail: str


# Why each refusal happens, as the description of its response.
REASONS: dict[int, str] = {
    400: "Bad request: the detail says what was wrong",
    401: "No credentials, or wrong ones: log in with HTTP Basic or a bearer token",
    403: "Not allowed to the caller: admins only, or beyond the user's operations and paths",
    404: "Not found, or not visible to the caller",
    409: "Conflicts with what the catalog holds: the detail says with what",
    413: "Larger than the destination accepts (max_file_size)",
    422: "Invalid input: the detail names each wrong field and why",
    429: "The destination already has its maximum of pending transfers (max_pending)",
    503: "The workflow engine (Temporal) is not reachable: try again later",
}

# Method order of the `Allow` header, as people read it.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route for the refusals it gives beyond those of its dependencies."""
    return {code: {"description": REASONS[code]} for code in codes}


def detail(status_code: int, message: str) -> JSONResponse:
    """An error answer; 401s say how to log in."""
    headers = {"WWW-Authenticate": 'Basic realm="ecpds"'} if status_code == 401 else None
    return JSONResponse(
        {"detail": " ".join(message.split())}, status_code=status_code, headers=headers
    )


def allowed_methods(request: Request) -> list[str]:
    """The methods routed for the request's path, by any of the routes of that path."""
    routes = request.app.router.routes
    return [
        method
        for method in METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]


def install_error_handlers(app: FastAPI) -> None:
    async def refused(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EcpdsError | IngestError)
        return detail(exc.status, str(exc))

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return detail(status.HTTP_422_UNPROCESSABLE_CONTENT, validation_message(exc.errors()))

    async def conflict(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, IntegrityError)
        reason = str(exc.orig).splitlines()[0]
        return detail(status.HTTP_409_CONFLICT, f"conflicts with the catalog: {reason}")

    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        return detail(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc))

    async def method_not_allowed(request: Request, _: Exception) -> JSONResponse:
        # Starlette names only the methods of the first route of the path, one of several.
        methods = allowed_methods(request)
        answer = detail(
            status.HTTP_405_METHOD_NOT_ALLOWED,
            f"{request.method} is not allowed on {request.url.path}: use {', '.join(methods)}",
        )
        answer.headers["Allow"] = ", ".join(methods)
        return answer

    app.add_exception_handler(EcpdsError, refused)
    app.add_exception_handler(IngestError, refused)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(IntegrityError, conflict)
    app.add_exception_handler(CredentialError, server_error)
    app.add_exception_handler(StoreError, server_error)
    app.add_exception_handler(status.HTTP_405_METHOD_NOT_ALLOWED, method_not_allowed)


def _calls(dependant: Dependant) -> set[Any]:
    found = set()
    for sub in dependant.dependencies:
        found.add(sub.call)
        found |= _calls(sub)
    return found


def _codes(route: APIRoute) -> set[int]:
    """The refusals a route gives through its dependencies and parameters."""
    calls = _calls(route.dependant)
    codes = set()
    if current_user in calls:
        codes.add(status.HTTP_401_UNAUTHORIZED)
    if admin_user in calls:
        codes.add(status.HTTP_403_FORBIDDEN)
    if get_flat_params(route.dependant) or route.body_field is not None:
        codes.add(status.HTTP_422_UNPROCESSABLE_CONTENT)
    if route.body_field is not None:
        codes.add(status.HTTP_400_BAD_REQUEST)  # a body that is not JSON at all
    return codes


def describe_errors(
    schema: dict[str, Any], routers: Iterable[tuple[str, APIRouter]]
) -> dict[str, Any]:
    """Declare in `schema` every refusal of the operations of `routers` (under their prefix),
    each answered with an `Error`."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components["Error"] = Error.model_json_schema()
    answer = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for prefix, router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute) or not route.include_in_schema:
                continue
            for method in route.methods or ():
                operation = schema["paths"][prefix + route.path_format][method.lower()]
                for code in _codes(route) - set(route.responses):
                    operation["responses"][str(code)] = {"description": REASONS[code]}
    for operations in schema["paths"].values():
        for operation in operations.values():
            for code, response in operation["responses"].items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = answer
    return schema
