"""The API docs page (Swagger UI), its scripts and styles served from the package, not a CDN."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

router = APIRouter(include_in_schema=False)

# Swagger UI 5 (it reads OpenAPI 3.1), as the fastapi-offline package ships it.
FOLDER = Path(fastapi_offline.__file__).parent / "static"
# What the docs page loads; nothing else of the folder is served.
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    def asset(name: str) -> str:
        return request.url_for("docs_asset", name=name).path

    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} API",
        swagger_js_url=asset("swagger-ui-bundle.js"),
        swagger_css_url=asset("swagger-ui.css"),
        swagger_favicon_url=asset("favicon.png"),
    )


@router.get("/docs-assets/{name}", name="docs_asset")
def docs_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no docs asset {name!r}")
    return FileResponse(FOLDER / name)
