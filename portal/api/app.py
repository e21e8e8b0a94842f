"""The REST API application: routers under /api/v1, errors as one-line JSON details."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from ecpds.core.catalog import validation_message
from ecpds.core.db import open_catalog
from ecpds.core.errors import EcpdsError
from ecpds.core.ingest import Dispatcher, IngestError
from ecpds.core.secrets import CredentialBox, CredentialError, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.store import Store, StoreError
from ecpds.portal.api import (
    aliases,
    destinations,
    files,
    health,
    hosts,
    operations,
    site,
    sources,
    tokens,
    transfers,
)
from ecpds.portal.api import keys as keys_router
from ecpds.portal.api import policies as policies_router
from ecpds.portal.api import users as users_router
from ecpds.portal.api.deps import ApiState
from ecpds.portal.web import data_router

PREFIX = "/api/v1"
ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    destinations.router,
    hosts.router,
    users_router.router,
    keys_router.router,
    policies_router.router,
    aliases.router,
    files.router,
    sources.router,
    transfers.router,
    site.router,
    tokens.router,
    operations.router,
)


def _detail(status_code: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Basic realm="ecpds"'} if status_code == 401 else None
    return JSONResponse(
        {"detail": " ".join(message.split())}, status_code=status_code, headers=headers
    )


def _install_error_handlers(app: FastAPI) -> None:
    async def refused(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EcpdsError | IngestError)
        return _detail(exc.status, str(exc))

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _detail(status.HTTP_422_UNPROCESSABLE_CONTENT, validation_message(exc.errors()))

    async def conflict(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, IntegrityError)
        reason = str(exc.orig).splitlines()[0]
        return _detail(status.HTTP_409_CONFLICT, f"conflicts with the catalog: {reason}")

    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        return _detail(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc))

    app.add_exception_handler(EcpdsError, refused)
    app.add_exception_handler(IngestError, refused)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(IntegrityError, conflict)
    app.add_exception_handler(CredentialError, server_error)
    app.add_exception_handler(StoreError, server_error)


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    store: Store | None = None,
    dispatcher: Dispatcher | None = None,
) -> FastAPI:
    """The portal's FastAPI app; opens (and migrates) the catalog unless given an engine."""
    app = FastAPI(
        title="ecpds",
        summary="Product data store: catalog, uploads and transfers",
        version="1",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
    )
    app.state.api = ApiState(
        settings=settings,
        engine=engine if engine is not None else open_catalog(settings.catalog_url),
        store=store if store is not None else Store(settings.store_urls),
        box=CredentialBox(load_or_create_key(settings.key_file)),
        dispatcher=dispatcher,
    )
    api = APIRouter(prefix=PREFIX)
    for router in ROUTERS:
        api.include_router(router)
    app.include_router(api)
    app.include_router(data_router(lambda: app.state.api))
    _install_error_handlers(app)
    return app
