"""The REST API application: routers under /api/v1 (and OpenECPDS's routes under
/ecpds/v1), errors as one-line JSON details."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from sqlalchemy import Engine

from ecpds.core.db import open_catalog
from ecpds.core.ingest import Dispatcher
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.snapshot import CatalogSnapshots
from ecpds.core.store import Store, open_store
from ecpds.portal.api import (
    acquisition,
    aliases,
    destinations,
    docs,
    ecpds_compat,
    events,
    expected,
    files,
    health,
    hosts,
    notifications,
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
from ecpds.portal.api.errors import describe_errors, install_error_handlers
from ecpds.portal.api.metrics import metrics_router
from ecpds.portal.console import include_console
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
    notifications.router,
    site.router,
    tokens.router,
    operations.router,
    acquisition.router,
    expected.router,
    events.router,
    docs.router,
)


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
        docs_url=None,  # served from the package by `docs.router`, not from a CDN
        redoc_url=None,
    )
    engine = engine if engine is not None else open_catalog(settings.catalog_url)
    app.state.api = ApiState(
        settings=settings,
        engine=engine,
        store=store if store is not None else open_store(settings),
        box=CredentialBox(load_or_create_key(settings.key_file)),
        snapshots=CatalogSnapshots(engine, settings.snapshot_seconds),
        dispatcher=dispatcher,
    )
    api = APIRouter(prefix=PREFIX)
    for router in ROUTERS:
        api.include_router(router)
    app.include_router(api)
    app.include_router(ecpds_compat.router, prefix=ecpds_compat.PREFIX)
    data = data_router(lambda: app.state.api)
    app.include_router(data)
    app.include_router(metrics_router(app.state.api.snapshots, public=settings.metrics_public))
    include_console(app)
    install_error_handlers(app)
    app.add_middleware(events.OperationLog, engine=app.state.api.engine)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            routers = [(PREFIX, router) for router in ROUTERS]
            routers += [(ecpds_compat.PREFIX, ecpds_compat.router), ("", data)]
            app.openapi_schema = describe_errors(FastAPI.openapi(app), routers)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
