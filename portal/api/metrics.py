"""The portal's Prometheus endpoint, /metrics: the catalog's numbers and the doors' traffic."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ecpds.core.metrics import portal_registry
from ecpds.core.snapshot import CatalogSnapshots
from ecpds.portal.api.deps import admin_user


def metrics_router(snapshots: CatalogSnapshots, *, public: bool) -> APIRouter:
    """/metrics outside the API's prefix and description; admins only unless `public`
    (Prometheus then logs in with basic_auth or a bearer token)."""
    registry = portal_registry(snapshots)
    router = APIRouter(include_in_schema=False)

    # A plain function: FastAPI runs it in a thread, so the first snapshot's queries do
    # not hold up the event loop that every other request shares.
    @router.get("/metrics", dependencies=[] if public else [Depends(admin_user)])
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
