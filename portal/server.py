"""The portal process: opens the catalog and store, then runs its network servers together."""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop
from temporalio.client import Client, RetryConfig

from ecpds.core.catalog import bootstrap_admin
from ecpds.core.db import open_catalog
from ecpds.core.dispatch import TemporalDispatcher
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.store import open_store
from ecpds.portal.api.app import create_app
from ecpds.portal.base import Portal, PortalError, PortalServer, serve_asgi
from ecpds.portal.frontends import serve_ftp, serve_s3, serve_sftp
from ecpds.portal.mqtt import serve_mqtt

log = logging.getLogger(__name__)

# While the engine is away every push would wait out the client's retries (10 s by
# default) before answering; 2 s still rides out a server restarting.
ENGINE_RETRIES = RetryConfig(max_elapsed_time_millis=2_000)


async def serve_https(portal: Portal, stop: asyncio.Event) -> None:
    """The REST API (and other HTTPS routes) until `stop` is set."""
    await serve_asgi("HTTPS", portal.app, portal.settings.https_port, portal.settings, stop)


# Every server the portal runs; each runs until `stop`.
SERVERS: list[PortalServer] = [
    serve_https,
    serve_mqtt,
    serve_s3,
    serve_ftp,
    serve_sftp,
]


def open_portal(settings: Settings) -> Portal:
    engine = open_catalog(settings.catalog_url)
    store = open_store(settings)
    box = CredentialBox(load_or_create_key(settings.key_file))
    try:
        password = bootstrap_admin(engine, settings)
    except ValueError as exc:
        raise PortalError(" ".join(str(exc).split())) from None
    if password is not None:
        where = settings.admin_password_file or settings.admin_file
        log.warning("created user admin; its password is in %s", where)
    app = create_app(settings, engine=engine, store=store)
    return Portal(settings=settings, engine=engine, store=store, box=box, app=app)


async def connect_temporal(settings: Settings) -> Client:
    """A Temporal client that connects on first use, and again after the engine was away.

    While it is down, pushes still succeed (their transfers wait in the catalog for the
    wake sweep) and what needs the engine answers 503.
    """
    return await Client.connect(
        settings.temporal_target,
        namespace=settings.temporal_namespace,
        retry_config=ENGINE_RETRIES,
        lazy=True,
    )


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run every portal server until `stop` is set or one of them fails."""
    stop = stop or asyncio.Event()
    portal = await asyncio.to_thread(open_portal, settings)
    portal.temporal = await connect_temporal(settings)
    portal.app.state.api.dispatcher = TemporalDispatcher(
        portal.temporal, settings.task_queue, portal.engine
    )
    tasks = [asyncio.create_task(server(portal, stop)) for server in SERVERS]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        portal.engine.dispose()


def run(settings: Settings) -> None:
    """`serve` in the foreground; Ctrl-C or SIGTERM stops it cleanly."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop)

    # uvloop's TLS and sockets nearly double the upload rate of asyncio's own loop.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
