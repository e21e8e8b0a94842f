"""The web console: server-rendered pages (Jinja2) for operators and data users."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ecpds.portal.console import inventory, routes


def include_console(app: FastAPI) -> None:
    """Serve the console on `app`, outside the OpenAPI description."""
    app.include_router(routes.router)
    app.include_router(inventory.router)
    static = Path(__file__).parent / "static"
    app.mount("/console-static", StaticFiles(directory=static), name="console-static")
