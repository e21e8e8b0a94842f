"""The REST API and a worker of our own system, on one loop thread, for CLI-level tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn
from sqlalchemy import Engine
from temporalio.client import Client

from ecpds.core.catalog import bootstrap_admin
from ecpds.core.devserver import wait_for_port
from ecpds.core.dispatch import TemporalDispatcher
from ecpds.core.settings import Settings
from ecpds.core.store import open_store
from ecpds.portal.api.app import create_app
from ecpds.workers.worker import build_worker
from peers.loop import LoopThread


@contextlib.contextmanager
def api_and_worker(
    settings: Settings, engine: Engine, port: int
) -> Iterator[tuple[Client, LoopThread, dict[str, str]]]:
    """Serve the API on `port` (its URL is `settings.api_url`) with a worker beside it.

    Yields the Temporal client, the loop both run on, and the environment a CLI needs to
    reach the API as the first admin.
    """
    password = bootstrap_admin(engine, settings)
    assert password is not None
    loop = LoopThread()
    client = loop.run(Client.connect(settings.temporal_target))
    api = create_app(
        settings,
        engine=engine,
        store=open_store(settings),
        dispatcher=TemporalDispatcher(client, settings.task_queue, engine),
    )
    server = uvicorn.Server(
        uvicorn.Config(
            api, host="127.0.0.1", port=port, log_level="warning", lifespan="off", access_log=False
        )
    )
    served = loop.submit(server.serve())

    async def build() -> Any:  # a worker is built on the loop it runs on
        return build_worker(client, settings)

    worker = loop.run(build())
    working = loop.submit(worker.run())
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield (
            client,
            loop,
            {
                "ECPDS_HOME": str(settings.home),
                "ECPDS_API_URL": settings.api_url or "",
                "ECPDS_API_PASSWORD": password,
                "ECPDS_API_USER": "admin",
            },
        )
    finally:
        server.should_exit = True
        loop.run(worker.shutdown())
        for future in (served, working):
            # The test's outcome matters here, not the teardown's.
            with contextlib.suppress(Exception):
                future.result(30)
        loop.close()
