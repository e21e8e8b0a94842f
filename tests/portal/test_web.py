"""HTTPS data routes with real clients: httpx and curl against uvicorn over TLS."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlmodel import select

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.devserver import free_port, wait_for_port
from ecpds.core.models import DataFile, DataTransfer, TransferStatus
from ecpds.portal.web import data_router

from .conftest import ALICE_PASSWORD, BOB_PASSWORD, LoopThread, Portal

ALICE = ("alice", ALICE_PASSWORD)
BOB = ("bob", BOB_PASSWORD)


@pytest.fixture
def web(portal: Portal, loop_thread: LoopThread, certificate: tuple[Path, Path]) -> Iterator[str]:
    app = FastAPI()
    app.include_router(data_router(lambda: portal.fs))
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(certificate[0]),
        ssl_keyfile=str(certificate[1]),
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    running = loop_thread.submit(server.serve())
    wait_for_port("127.0.0.1", port, timeout=20)
    yield f"https://127.0.0.1:{port}"
    server.should_exit = True
    running.result(20)


def client(base: str, auth: tuple[str, str] | None = ALICE) -> httpx.Client:
    return httpx.Client(base_url=base, auth=auth, verify=False, timeout=60)


def test_upload_browse_download_with_httpx(web: str, portal: Portal) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    with client(web) as http:
        put = http.put("/data/alpha/run/12/forecast.grib", content=payload)
        assert put.status_code == 201, put.text
        assert put.json()["md5"] == hashlib.md5(payload).hexdigest()

        root = http.get("/data/", params={"format": "json"}).json()
        assert root == [{"name": "alpha", "type": "folder"}]
        assert http.get("/data/alpha/", headers={"accept": "application/json"}).json() == [
            {"name": "run", "type": "folder"}
        ]
        listing = http.get("/data/alpha/run/12", params={"format": "json"}).json()
        assert [(e["name"], e["size"], e["status"]) for e in listing] == [
            ("forecast.grib", len(payload), "HOLD")
        ]
        page = http.get("/data/alpha/run/12/")
        assert "text/html" in page.headers["content-type"]
        assert 'href="/data/alpha/run/12/forecast.grib"' in page.text

        part = http.get("/data/alpha/run/12/forecast.grib", headers={"range": "bytes=100-1099"})
        assert part.status_code == 206
        assert part.content == payload[100:1100]
        assert part.headers["content-range"] == f"bytes 100-1099/{len(payload)}"
        tail = http.get("/data/alpha/run/12/forecast.grib", headers={"range": "bytes=-10"})
        assert tail.content == payload[-10:]
        bad = http.get("/data/alpha/run/12/forecast.grib", headers={"range": "bytes=999999999-"})
        assert bad.status_code == 416

        with session_scope(portal.engine) as session:
            assert session.exec(select(DataTransfer.status)).one() == TransferStatus.HOLD

        full = http.get("/data/alpha/run/12/forecast.grib")
        assert full.status_code == 200
        assert full.content == payload
        etag = full.headers["etag"]
        assert etag == f'"{hashlib.md5(payload).hexdigest()}"'
        cached = http.get("/data/alpha/run/12/forecast.grib", headers={"if-none-match": etag})
        assert cached.status_code == 304
        head = http.head("/data/alpha/run/12/forecast.grib")
        assert head.headers["content-length"] == str(len(payload))

    with session_scope(portal.engine) as session:
        transfer = session.exec(select(DataTransfer)).one()
        assert transfer.status == TransferStatus.DONE
        assert transfer.bytes_sent == len(payload)


def test_upload_replaces_and_delete_withdraws(web: str, portal: Portal) -> None:
    with client(web) as http:
        assert http.put("/data/alpha/a.txt", content=b"first").status_code == 201
        assert http.put("/data/alpha/a.txt", content=b"second!").status_code == 201
        assert http.get("/data/alpha/a.txt").content == b"second!"
        assert len(http.get("/data/alpha/", params={"format": "json"}).json()) == 1
        assert http.delete("/data/alpha/a.txt").status_code == 204
        assert http.get("/data/alpha/a.txt").status_code == 404
        assert http.get("/data/alpha/", params={"format": "json"}).json() == []


def test_upload_uses_incoming_settings(web: str, portal: Portal) -> None:
    with session_scope(portal.engine) as session:
        dest = catalog.get_destination(session, name="alpha")
        dest.incoming_priority = 7
        dest.incoming_metadata = {"origin": "portal"}
        session.add(dest)
    with client(web) as http:
        assert http.put("/data/alpha/b.bin", content=b"x" * 10).status_code == 201
    with session_scope(portal.engine) as session:
        transfer = session.exec(select(DataTransfer)).one()
        data_file = session.exec(select(DataFile)).one()
        assert transfer.priority == 7
        assert data_file.meta == {"origin": "portal"}


def test_curl_upload_download_and_token(web: str, portal: Portal, tmp_path: Path) -> None:
    source = tmp_path / "obs.bufr"
    source.write_bytes(os.urandom(200_000))
    up = subprocess.run(
        ["curl", "-sk", "-u", "alice:" + ALICE_PASSWORD, "-T", str(source),
         f"{web}/data/alpha/obs.bufr", "-w", "%{http_code}", "-o", "/dev/null"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert up.stdout == "201"
    with session_scope(portal.engine) as session:
        alice = catalog.get_user(session, name="alice")
        token = catalog.create_token(session, user=alice)
    out = tmp_path / "back"
    subprocess.run(
        ["curl", "-skf", "-H", f"Authorization: Bearer {token}", "-o", str(out),
         f"{web}/data/alpha/obs.bufr"],
        check=True,
    )  # fmt: skip
    assert out.read_bytes() == source.read_bytes()
    ranged = subprocess.run(
        ["curl", "-skf", "-u", "alice:" + ALICE_PASSWORD, "-r", "10-19",
         f"{web}/data/alpha/obs.bufr"],
        capture_output=True, check=True,
    )  # fmt: skip
    assert ranged.stdout == source.read_bytes()[10:20]


def test_users_are_kept_apart(web: str, portal: Portal) -> None:
    with client(web) as http:
        assert http.put("/data/alpha/secret.txt", content=b"alice only").status_code == 201
    with client(web, BOB) as http:
        attempts = [
            "/data/alpha/secret.txt",
            "/data/beta/../alpha/secret.txt",
            "/data/beta/%2e%2e/alpha/secret.txt",
            "/data/beta/%252e%252e/alpha/secret.txt",
            "/data/beta/..%5calpha%5csecret.txt",
            "/data/%2e%2e/%2e%2e/etc/passwd",
            "/data//alpha/secret.txt",
        ]
        for path in attempts:
            response = http.get(path)
            assert response.status_code in (400, 403, 404), path
            assert b"alice only" not in response.content
        assert http.get("/data/", params={"format": "json"}).json() == [
            {"name": "beta", "type": "folder"}
        ]
        assert http.get("/data/alpha/").status_code == 404
        assert http.put("/data/alpha/evil.txt", content=b"x").status_code == 404
        assert http.put("/data/beta/../alpha/evil.txt", content=b"x").status_code == 404
        assert http.put("/data/beta/a%00b", content=b"x").status_code == 400
        assert http.delete("/data/alpha/secret.txt").status_code == 404
    with client(web, ("alice", "wrong-password")) as http:
        denied = http.get("/data/")
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"].startswith("Basic")
    with client(web, None) as http:
        assert http.get("/data/alpha/").status_code == 401
    with client(web) as http:
        assert http.get("/data/alpha/secret.txt").content == b"alice only"


def test_read_only_user_cannot_upload(web: str, portal: Portal) -> None:
    with session_scope(portal.engine) as session:
        alice = catalog.get_user(session, name="alice")
        alice.operations = ["get", "dir"]
        session.add(alice)
    with client(web) as http:
        refused = http.put("/data/alpha/x.txt", content=b"x")
        assert refused.status_code == 403
        assert "may not put" in refused.json()["detail"]


def test_broken_upload_leaves_nothing(web: str, portal: Portal) -> None:
    port = int(web.rsplit(":", 1)[1])
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    auth = httpx.BasicAuth(*ALICE)._auth_header
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(
            b"PUT /data/alpha/partial.bin HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: {auth}\r\nContent-Length: 10000000\r\n\r\n".encode()
            + os.urandom(3_000_000)
        )
        # The connection is cut only once the server is writing the upload to the store.
        assert _eventually(portal.store.partials), "the server never started writing the upload"
    assert _eventually(lambda: not portal.store.partials()), portal.store.partials()
    with client(web) as http:
        assert http.get("/data/alpha/", params={"format": "json"}).json() == []
    assert portal.store.partials() == []
    with session_scope(portal.engine) as session:
        assert session.exec(select(DataFile)).all() == []


def test_twenty_concurrent_downloads(web: str, portal: Portal) -> None:
    payload = os.urandom(2 * 1024 * 1024)
    digest = hashlib.md5(payload).hexdigest()
    with client(web) as http:
        assert http.put("/data/alpha/big.bin", content=payload).status_code == 201

    async def fetch_all() -> list[str]:
        async with httpx.AsyncClient(base_url=web, auth=ALICE, verify=False, timeout=120) as http:

            async def one() -> str:
                md5 = hashlib.md5()
                async with http.stream("GET", "/data/alpha/big.bin") as response:
                    assert response.status_code == 200
                    async for chunk in response.aiter_bytes():
                        md5.update(chunk)
                return md5.hexdigest()

            return await asyncio.gather(*(one() for _ in range(20)))

    assert asyncio.run(fetch_all()) == [digest] * 20


def test_damaged_object_is_not_served_whole(web: str, portal: Portal) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    with client(web) as http:
        data_file = http.put("/data/alpha/damaged.bin", content=payload).json()["id"]
    path = Path(portal.store.primary.key(data_file))
    damaged = bytearray(path.read_bytes())
    damaged[12345] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with client(web) as http, pytest.raises(httpx.HTTPError):
        http.get("/data/alpha/damaged.bin")
    with session_scope(portal.engine) as session:
        assert session.exec(select(DataTransfer.status)).one() == TransferStatus.HOLD


def _eventually(check: Callable[[], object], within: float = 60.0) -> bool:
    """Whether `check` comes true within `within` seconds (a bound, not a measure)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
