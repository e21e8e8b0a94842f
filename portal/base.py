"""What every portal server shares: the `Portal`, its one-line start-up error, the ASGI runner.

It imports no front end, so the front ends can import it and `server` can gather them all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine
from temporalio.client import Client

from ecpds.core.metrics import door_traffic
from ecpds.core.secrets import CredentialBox
from ecpds.core.settings import Settings
from ecpds.core.store import Store
from ecpds.portal.tls import ensure_certificate


class PortalError(Exception):
    """The portal cannot start; the message is one line."""


@dataclass
class Portal:
    """What the portal's servers share."""

    settings: Settings
    engine: Engine
    store: Store
    box: CredentialBox
    app: FastAPI
    temporal: Client | None = None


PortalServer = Callable[[Portal, asyncio.Event], Coroutine[Any, Any, None]]


def cannot_listen(name: str, host: str, port: int, exc: BaseException | None = None) -> PortalError:
    reason = f": {exc.strerror or exc}" if isinstance(exc, OSError) else f": {exc}" if exc else ""
    return PortalError(f"{name} cannot listen on {host}:{port}{reason}")


class _Uvicorn(uvicorn.Server):
    # The portal handles signals for all its servers at once.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class CountedDoor:
    """An ASGI app around a door's app, counting its requests and body bytes for /metrics."""

    def __init__(self, app: Any, door: str) -> None:
        self.app = app
        self.traffic = door_traffic(door)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.traffic.requests.inc()

        async def counted_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                self.traffic.received.inc(len(message.get("body", b"")))
            return message

        async def counted_send(message: Any) -> None:
            if message["type"] == "http.response.body":
                self.traffic.sent.inc(len(message.get("body", b"")))
            await send(message)

        await self.app(scope, counted_receive, counted_send)


async def serve_asgi(
    name: str, app: Any, port: int, settings: Settings, stop: asyncio.Event
) -> None:
    """Serve `app` over TLS with the portal's certificate on `port` until `stop` is set."""
    cert, key = await asyncio.to_thread(ensure_certificate, settings)
    server = _Uvicorn(
        uvicorn.Config(
            CountedDoor(app, name.lower()),
            host=settings.bind,
            port=port,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
    )

    async def stop_when_asked() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_when_asked())
    try:
        await server.serve()
    except SystemExit:
        # uvicorn exits the process when it cannot bind; the portal reports it instead.
        raise cannot_listen(name, settings.bind, port) from None
    finally:
        watcher.cancel()
    if not stop.is_set():
        raise PortalError(f"{name} on {settings.bind}:{port} stopped on its own")
