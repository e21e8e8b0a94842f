"""The REST API over real HTTPS (uvicorn in a thread, httpx), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from peers.loop import LoopThread
from sqlalchemy import Engine
from temporalio.client import Client

from ecpds.core.catalog import bootstrap_admin
from ecpds.core.devserver import free_port
from ecpds.core.dispatch import TemporalDispatcher
from ecpds.core.engine import destination_workflow_id
from ecpds.core.settings import Settings
from ecpds.core.store import Store
from ecpds.portal.api.app import create_app
from ecpds.portal.server import serve
from ecpds.portal.tls import ensure_certificate

SECRET = "s3cr3t-host-password"


@dataclass
class Api:
    url: str
    admin: httpx.Client
    store: Store
    loop: LoopThread
    temporal: Client | None = None

    def client(self, auth: Any = None, headers: dict[str, str] | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=auth, headers=headers, verify=False, timeout=60)


def _run_api(
    settings: Settings, engine: Engine, store: Store, temporal: str = "", task_queue: str = ""
) -> Iterator[Api]:
    loop = LoopThread()
    client = loop.run(Client.connect(temporal)) if temporal else None
    dispatcher = TemporalDispatcher(client, task_queue, engine) if client else None
    app = create_app(settings, engine=engine, store=store, dispatcher=dispatcher)
    password = bootstrap_admin(engine, settings)
    assert password is not None
    cert, key = ensure_certificate(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            log_level="warning",
            lifespan="off",
        )
    )
    running = loop.submit(server.serve())
    while not server.started:
        assert not running.done(), f"uvicorn did not start: {running.exception()}"
        time.sleep(0.02)
    url = f"https://127.0.0.1:{port}/api/v1"
    admin = httpx.Client(base_url=url, auth=("admin", password), verify=False, timeout=60)
    try:
        yield Api(url, admin, store, loop, client)
    finally:
        admin.close()
        server.should_exit = True
        running.result(30)
        loop.close()


@pytest.fixture
def api(settings: Settings, engine: Engine, store: Store) -> Iterator[Api]:
    yield from _run_api(settings, engine, store)


def ok(response: httpx.Response, code: int = 200) -> Any:
    assert response.status_code == code, response.text
    return response.json() if response.content else None


def refused(response: httpx.Response, code: int, *words: str) -> str:
    """The one-line detail of an error answer, which must name `words`."""
    assert response.status_code == code, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail
    for word in words:
        assert word in detail, detail
    return detail


def snapshot(api: Api) -> dict[str, Any]:
    """Everything the catalog and the store hold, as seen from outside."""
    state = {
        what: ok(api.admin.get(f"/{what}"))
        for what in ("destinations", "hosts", "users", "aliases", "files", "transfers")
    }
    root = Path(api.store.primary.root)
    state["store"] = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    return state


def make_site(api: Api, tmp_path: Path) -> None:
    """Host h1 (file://) serving destination d1; d2 and d3 are aliases of d1."""
    ok(
        api.admin.post(
            "/hosts",
            json={"name": "h1", "url": f"file://{tmp_path}/remote", "comment": "local"},
        ),
        201,
    )
    for name in ("d1", "d2", "d3"):
        hosts = ["h1"] if name != "d3" else []
        ok(api.admin.post("/destinations", json={"name": name, "hosts": hosts}), 201)
    ok(api.admin.post("/aliases", json={"name": "a12", "source": "d1", "target": "d2"}), 201)
    ok(
        api.admin.post(
            "/aliases",
            json={
                "name": "a13",
                "source": "d1",
                "target": "d3",
                "pattern": r"^(\w+)\.grib$",
                "rewrite": r"grib/\1.grb",
            },
        ),
        201,
    )


def test_health_and_openapi_need_no_login(api: Api) -> None:
    with api.client() as anonymous:
        assert ok(anonymous.get("/health")) == {"status": "ok"}
        spec = ok(anonymous.get("/openapi.json"))
        assert "/api/v1/destinations/{destination}/files" in spec["paths"]
        refused(anonymous.get("/destinations"), 401, "credentials")


def test_crud_of_every_entity(api: Api, tmp_path: Path) -> None:
    make_site(api, tmp_path)
    ok(
        api.admin.post(
            "/hosts",
            json={
                "name": "h2",
                "url": "sftp://ops@remote.example/in",
                "credentials": {"password": SECRET},
            },
        ),
        201,
    )
    assert ok(api.admin.get("/hosts/h2"))["credential_keys"] == ["password"]
    ok(api.admin.patch("/destinations/d1", json={"hosts": ["h2", "h1"], "max_connections": 9}))
    d1 = ok(api.admin.get("/destinations/d1"))
    assert (d1["hosts"], d1["max_connections"]) == (["h2", "h1"], 9)
    assert [d["name"] for d in ok(api.admin.get("/destinations"))] == ["d1", "d2", "d3"]

    ok(api.admin.patch("/aliases/a12", json={"active": False}))
    assert ok(api.admin.get("/aliases/a12"))["active"] is False

    user = {"name": "carol", "password": "carol-password", "destinations": ["d2"]}
    ok(api.admin.post("/users", json=user), 201)
    ok(api.admin.patch("/users/carol", json={"comment": "ops", "destinations": ["d1", "d2"]}))
    assert ok(api.admin.get("/users/carol"))["destinations"] == ["d1", "d2"]

    # Credentials and password hashes never come back from any GET.
    for path in ("/hosts", "/hosts/h2", "/users", "/users/carol", "/destinations", "/aliases"):
        text = api.admin.get(path).text
        assert SECRET not in text and "credentials_encrypted" not in text
        assert "password" not in text.replace('"password"]', "")

    ok(api.admin.delete("/users/carol"), 204)
    ok(api.admin.delete("/aliases/a13"), 204)
    ok(api.admin.delete("/destinations/d3"), 204)
    refused(api.admin.delete("/hosts/h2"), 409, "h2", "'d1' (primary)", "force")
    ok(api.admin.delete("/hosts/h2", params={"force": True}), 204)
    refused(api.admin.get("/users/carol"), 404, "carol")
    refused(api.admin.get("/aliases/a13"), 404, "a13")
    assert ok(api.admin.get("/destinations/d1"))["hosts"] == ["h1"]


def _upload(api: Api, destination: str, name: str, body: bytes = b"x") -> httpx.Response:
    return api.admin.post(f"/destinations/{destination}/files", params={"name": name}, content=body)


def _as_stranger(api: Api) -> httpx.Response:
    with api.client(auth=("admin", "wrong-password")) as client:
        return client.get("/destinations")


BAD_INPUT = [
    pytest.param(
        lambda api: api.admin.post("/destinations", json={"name": "d9", "colour": "red"}),
        422,
        ("colour", "unknown key"),
        id="unknown-key",
    ),
    pytest.param(
        lambda api: api.admin.post("/hosts", json={"name": "h9", "url": "gopher://x/y"}),
        422,
        ("h9", "gopher"),
        id="unknown-scheme",
    ),
    pytest.param(
        lambda api: api.admin.post("/destinations", json={"name": "d1"}),
        409,
        ("d1", "already exists"),
        id="duplicate-destination",
    ),
    pytest.param(
        lambda api: api.admin.post("/hosts", json={"name": "h9", "url": "sftp://ops@far/in"}),
        422,
        ("h9", "password"),
        id="missing-credential",
    ),
    pytest.param(
        lambda api: _upload(api, "nowhere", "a.bin"),
        404,
        ("nowhere",),
        id="upload-unknown-destination",
    ),
    pytest.param(
        lambda api: api.admin.post(
            "/destinations/d1/files", params={"name": "a", "metadata": "k=v,oops"}, content=b"x"
        ),
        422,
        ("oops", "key=value"),
        id="bad-metadata",
    ),
    pytest.param(
        lambda api: api.admin.post(
            "/destinations/d1/files", params={"name": "a", "lifetime": -5}, content=b"x"
        ),
        422,
        ("lifetime",),
        id="negative-lifetime",
    ),
    pytest.param(
        lambda api: api.admin.post(
            "/destinations/d1/files",
            params={"name": "a", "at": "2001-01-01T00:00:00Z", "lifetime": 60},
            content=b"x",
        ),
        422,
        ("d1", "expire"),
        id="expired-before-start",
    ),
    pytest.param(
        lambda api: api.admin.post("/destinations", json={"name": "d9", "hosts": ["h1", "ghost"]}),
        422,
        ("ghost",),
        id="unknown-host-in-destination",
    ),
    pytest.param(
        lambda api: api.admin.post(
            "/aliases", json={"name": "a9", "source": "d1", "target": "d2", "pattern": "(("}
        ),
        422,
        ("a9", "pattern"),
        id="bad-alias-pattern",
    ),
    pytest.param(
        lambda api: _as_stranger(api),
        401,
        ("admin",),
        id="wrong-password",
    ),
    pytest.param(
        lambda api: api.admin.post(
            "/apply",
            json={
                "host": [{"name": "hx", "url": "file:///x"}],
                "destination": [{"name": "d1", "shape": 1}],
            },
        ),
        422,
        ("shape", "unknown key"),
        id="apply-unknown-key",
    ),
    pytest.param(
        lambda api: api.admin.post(
            "/apply",
            json={"host": [{"name": "hx", "url": "file:///x"}, {"name": "hy", "url": "nope://x"}]},
        ),
        422,
        ("hy", "nope"),
        id="apply-all-or-nothing",
    ),
]


@pytest.mark.parametrize(("call", "code", "words"), BAD_INPUT)
def test_bad_input_is_one_line_and_changes_nothing(
    api: Api, tmp_path: Path, call: Any, code: int, words: tuple[str, ...]
) -> None:
    make_site(api, tmp_path)
    before = snapshot(api)
    refused(call(api), code, *words)
    assert snapshot(api) == before


def test_upload_registers_file_and_transfers_for_aliases(api: Api, tmp_path: Path) -> None:
    make_site(api, tmp_path)
    payload = os.urandom(3 * 1024 * 1024 + 7)
    result = ok(
        api.admin.post(
            "/destinations/d1/files",
            params={"name": "t850.grib", "priority": 5, "metadata": "param=t,level=850"},
            content=payload,
        ),
        201,
    )
    assert result["size"] == len(payload)
    assert result["md5"] == hashlib.md5(payload).hexdigest()
    assert result["adler32"] == f"{zlib.adler32(payload) & 0xFFFFFFFF:08x}"
    transfers = {t["destination"]: t for t in ok(api.admin.get("/transfers"))}
    assert sorted(transfers) == ["d1", "d2", "d3"]
    assert sorted(result["transfers"]) == sorted(t["id"] for t in transfers.values())
    assert transfers["d1"]["target"] == "t850.grib" and transfers["d1"]["priority"] == 5
    assert transfers["d1"]["status"] == "WAIT"
    assert transfers["d3"]["target"] == "grib/t850.grb"
    assert transfers["d3"]["status"] == "HOLD"  # d3 has no dissemination host

    # The conditional alias (regex on the target) does not match this name.
    other = ok(_upload(api, "d1", "notes.txt", b"hello"), 201)
    destinations = {
        t["destination"]
        for t in ok(api.admin.get("/transfers", params={"data_file_id": other["id"]}))
    }
    assert destinations == {"d1", "d2"}

    data_file = ok(api.admin.get(f"/files/{result['id']}"))
    assert data_file["meta"] == {"param": "t", "level": "850"}
    found = ok(api.admin.get("/files", params={"metadata": "level=850"}))
    assert [f["id"] for f in found] == [result["id"]]
    assert api.admin.get(f"/files/{result['id']}/content").content == payload

    ok(api.admin.delete(f"/files/{result['id']}"), 204)
    refused(api.admin.get(f"/files/{result['id']}"), 404, result["id"])
    assert not api.store.exists(result["id"])


def test_users_see_and_upload_only_their_destinations(api: Api, tmp_path: Path) -> None:
    make_site(api, tmp_path)
    dave = {"name": "dave", "password": "dave-password", "destinations": ["d2"]}
    ok(api.admin.post("/users", json=dave), 201)
    theirs = ok(_upload(api, "d1", "shared.bin"), 201)
    with api.client(auth=("dave", "dave-password")) as client:
        assert [d["name"] for d in ok(client.get("/destinations"))] == ["d2"]
        refused(client.get("/destinations/d1"), 404, "d1")
        refused(client.post("/destinations", json={"name": "mine"}), 403, "dave")
        refused(client.get("/hosts"), 403, "dave")
        # Not yours reads as absent, as for a GET: names of other users' destinations stay hidden.
        refused(
            client.post("/destinations/d1/files", params={"name": "x"}, content=b"x"), 404, "d1"
        )
        mine = ok(client.post("/destinations/d2/files", params={"name": "y"}, content=b"y"), 201)
        # dave sees the file queued to d2 through the alias, and his own; only d2 transfers.
        assert {f["id"] for f in ok(client.get("/files"))} == {theirs["id"], mine["id"]}
        assert {t["destination"] for t in ok(client.get("/transfers"))} == {"d2"}


def test_bearer_token_replaces_the_password(api: Api) -> None:
    token = ok(api.admin.post("/tokens", json={"label": "ci"}), 201)["token"]
    with api.client(headers={"Authorization": f"Bearer {token}"}) as client:
        assert ok(client.get("/destinations")) == []
    with api.client(headers={"Authorization": "Bearer not-a-token"}) as client:
        refused(client.get("/destinations"), 401, "token")


def test_apply_twice_changes_nothing_the_second_time(api: Api) -> None:
    spec: dict[str, Any] = {
        "host": [{"name": "sx", "url": "sftp://ops@far/in", "credentials": {"password": SECRET}}],
        "destination": [{"name": "dx", "hosts": ["sx"]}, {"name": "dy"}],
        "alias": [{"name": "xy", "source": "dx", "target": "dy"}],
        "user": [{"name": "eve", "password": "eve-password", "destinations": ["dy", "dx"]}],
    }
    dry = ok(api.admin.post("/apply", params={"dry_run": True}, json=spec))
    assert len(dry["created"]) == 5
    assert ok(api.admin.get("/destinations")) == []
    first = ok(api.admin.post("/apply", json=spec))
    assert sorted(first["created"]) == sorted(dry["created"])
    second = ok(api.admin.post("/apply", json=spec))
    assert second["created"] == second["updated"] == [] and len(second["unchanged"]) == 5
    spec["destination"][0]["max_connections"] = 2
    third = ok(api.admin.post("/apply", json=spec))
    assert third["updated"] == ["destination dx"]


@pytest.fixture
def temporal_api(
    settings: Settings, engine: Engine, store: Store, temporal_server: str, task_queue: str
) -> Iterator[Api]:
    yield from _run_api(settings, engine, store, temporal_server, task_queue)


def test_upload_queues_transfers_on_temporal(temporal_api: Api, tmp_path: Path) -> None:
    api, client = temporal_api, temporal_api.temporal
    assert client is not None
    make_site(api, tmp_path)
    ok(_upload(api, "d1", "queued.bin", b"q" * 1000), 201)

    async def workflow_type(name: str) -> str:
        handle = client.get_workflow_handle(destination_workflow_id(name))
        return (await handle.describe()).workflow_type

    # d1 and d2 have a host, so their schedulers were signalled; d3 holds its transfer.
    assert api.loop.run(workflow_type("d1")) == "DestinationWorkflow"
    assert api.loop.run(workflow_type("d2")) == "DestinationWorkflow"


def test_portal_server_bootstraps_admin_and_serves_https(
    settings: Settings, temporal_server: str
) -> None:
    ports = (
        "https_port",
        "mqtt_port",
        "mqtts_port",
        "mqtt_ws_port",
        "ftp_port",
        "sftp_port",
        "s3_port",
    )
    settings = settings.model_copy(
        update={p: free_port() for p in ports} | {"temporal_address": temporal_server}
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(serve(settings, stop))
        url = f"https://127.0.0.1:{settings.https_port}/api/v1"
        async with httpx.AsyncClient(base_url=url, verify=False) as client:
            for _ in range(600):
                if running.done():
                    running.result()
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            assert settings.admin_file.stat().st_mode & 0o777 == 0o600
            admin = settings.admin_file.read_text()
            password = admin.split('api_password = "')[1].split('"')[0]
            response = await client.get("/destinations", auth=("admin", password))
            assert response.status_code == 200 and response.json() == []
        stop.set()
        await running

    asyncio.run(scenario())
