"""Real HTTP peers in child processes: WebDAV (wsgidav, basic auth) and an HTTPS upload
server (PUT and multipart POST, bearer token), on free local ports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ecpds.core.devserver import free_port, wait_for_port
from peers.tls import self_signed

SCRIPT = Path(__file__).with_name("http_server.py")
USER = "ecpds"
PASSWORD = "dav-Secret-1"
TOKEN = "upload-token-1"


@dataclass
class HttpServer:
    scheme: str
    port: int
    root: Path
    user: str | None  # basic auth user (WebDAV); None for bearer
    secret: str  # the password or the token
    ca_file: str | None

    def url(self, folder: str) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{self.scheme}://{user}127.0.0.1:{self.port}/{folder}"

    @property
    def credentials(self) -> dict[str, str]:
        return {"password": self.secret} if self.user else {"token": self.secret}


def _serve(folder: Path, mode: str, tls: bool) -> Iterator[HttpServer]:
    try:
        if mode == "webdav":
            import cheroot  # noqa: F401
            import wsgidav  # noqa: F401
    except ImportError:
        pytest.skip("wsgidav and cheroot are needed for the WebDAV peer (pip install wsgidav)")
    root = folder / "root"
    root.mkdir()
    port = free_port()
    secret = PASSWORD if mode == "webdav" else TOKEN
    args = [sys.executable, str(SCRIPT), mode, "--port", str(port), "--root", str(root)]
    args += ["--secret", secret]
    ca_file = None
    if tls:
        cert, key = self_signed(folder)
        ca_file = str(cert)
        args += ["--cert", str(cert), "--key", str(key)]
    log = (folder / "http.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=log)
    try:
        wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
        yield HttpServer(
            "https" if tls else "http",
            port,
            root,
            USER if mode == "webdav" else None,
            secret,
            ca_file,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def webdav_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    yield from _serve(tmp_path_factory.mktemp("webdav"), "webdav", tls=False)


@pytest.fixture(scope="session")
def https_upload_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    yield from _serve(tmp_path_factory.mktemp("https-upload"), "upload", tls=True)
