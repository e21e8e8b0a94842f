"""Operations through the REST API and the `ecpds` command, on a running scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from ecpds.cli.main import app as cli_app
from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.devserver import free_port, wait_for_port
from ecpds.core.models import DataUserCreate
from ecpds.portal.api.app import create_app

from .conftest import Dissemination


@dataclass
class Portal:
    url: str
    password: str

    def cli(self, *args: str) -> tuple[int, str]:
        """Run `ecpds ARGS` against the portal (blocking: call it in a thread)."""
        result = CliRunner().invoke(
            cli_app,
            list(args),
            env={
                "ECPDS_API_URL": self.url,
                "ECPDS_API_USER": "admin",
                "ECPDS_API_PASSWORD": self.password,
            },
        )
        return result.exit_code, result.output


@pytest.fixture
async def portal(dissemination: Dissemination) -> AsyncIterator[Portal]:
    """The REST API over plain HTTP on a free port, in this event loop."""
    env = dissemination
    password = catalog.bootstrap_admin(env.engine, env.settings)
    assert password
    with session_scope(env.engine) as session:
        catalog.create_user(session, data=DataUserCreate(name="bob", password="bob-password"))
    app = create_app(env.settings, engine=env.engine, store=env.store, dispatcher=env.dispatcher)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 20)
    yield Portal(f"http://127.0.0.1:{port}/api/v1", password)
    server.should_exit = True
    await task


async def test_operations_over_rest_and_cli(dissemination: Dissemination, portal: Portal) -> None:
    env = dissemination
    dest = env.name("opsapi")
    env.add_host(f"{dest}-h", f"file://{env.tmp / 'out'}", options={"max_rate": 1 << 20})
    env.add_destination(dest, [f"{dest}-h"], max_connections=1)
    admin = httpx.BasicAuth("admin", portal.password)
    async with httpx.AsyncClient(base_url=portal.url, auth=admin) as http:
        answer = await http.post(f"/destinations/{dest}/operations/hold")
        assert answer.status_code == 202, answer.text
        await env.wait_destination(dest, lambda d: d.on_hold)
        [small] = await env.put(dest, "small", b"s" * 100, priority=50)
        answer = await http.post(f"/transfers/{small}/operations/priority", params={"value": 7})
        assert answer.status_code == 202
        missing = await http.post("/destinations/nowhere/operations/hold")
        assert missing.status_code == 404 and missing.json() == {
            "detail": "destination 'nowhere' does not exist"
        }
        wrong = await http.post(f"/transfers/{small}/operations/hold")
        assert wrong.status_code == 422 and "destination" in wrong.json()["detail"]
        unknown = await http.post(f"/transfers/{small}/operations/explode")
        assert unknown.status_code == 422
        bob = httpx.BasicAuth("bob", "bob-password")
        refused = await http.post(f"/destinations/{dest}/operations/restart", auth=bob)
        assert refused.status_code == 403
    # The priority reaches the catalog through the scheduler.
    while env.transfers([small])[0].priority != 7:
        await asyncio.sleep(0.1)

    code, output = await asyncio.to_thread(portal.cli, "scheduler", "restart", dest)
    assert code == 0, output
    await env.wait_for([small], "DONE")

    # A slow transfer (1 MiB/s): interrupt it, queue it again, then restart immediately.
    [slow] = await env.put(dest, "slow", b"w" * (6 << 20))
    await env.wait_for([slow], "EXEC")
    code, output = await asyncio.to_thread(portal.cli, "transfer", "interrupt", str(slow))
    assert code == 0, output
    [interrupted] = await env.wait_for([slow], "INTR")
    assert interrupted.last_error == "interrupted by an operator"
    assert not (env.tmp / "out" / "slow").exists()
    code, output = await asyncio.to_thread(portal.cli, "transfer", "requeue", str(slow))
    assert code == 0, output
    await env.wait_for([slow], "EXEC")
    code, output = await asyncio.to_thread(portal.cli, "scheduler", "restart", dest, "--immediate")
    assert code == 0, output
    [done] = await env.wait_for([slow], "DONE")
    assert done.start_count == 2
    assert (env.tmp / "out" / "slow").stat().st_size == 6 << 20
    code, output = await asyncio.to_thread(portal.cli, "transfer", "show", str(slow), "--json")
    assert code == 0 and '"status": "DONE"' in output
    code, output = await asyncio.to_thread(portal.cli, "transfer", "stop", "999999")
    assert code == 1 and "transfer 999999 does not exist" in output
    # Several ids go in one call of the selection's route; each refusal is told.
    code, output = await asyncio.to_thread(
        portal.cli, "transfer", "stop", str(slow), "999999", "999999"
    )
    assert code == 1, output
    assert "stop: sent for 1 of 2 transfers" in output
    assert output.count("transfer 999999 does not exist") == 1
