"""Real FTP and FTPS servers (pyftpdlib in a child process) on free local ports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ecpds.core.devserver import free_port, wait_for_port
from peers.tls import self_signed

USER = "ecpds"
PASSWORD = "ftp-Secret-1"
SCRIPT = Path(__file__).with_name("ftp_server.py")


@dataclass
class FtpServer:
    scheme: str  # "ftp" or "ftps"
    host: str
    port: int
    root: Path
    user: str
    password: str
    ca_file: str | None  # ftps: the self-signed certificate to trust

    def url(self, folder: str) -> str:
        return f"{self.scheme}://{self.user}@{self.host}:{self.port}/{folder}"


def _serve(folder: Path, scheme: str) -> Iterator[FtpServer]:
    root = folder / "root"
    root.mkdir()
    port = free_port()
    args = [sys.executable, str(SCRIPT), "--port", str(port), "--root", str(root)]
    args += ["--user", USER, "--password", PASSWORD]
    ca_file = None
    if scheme == "ftps":
        if not shutil.which("openssl"):
            pytest.skip("openssl is needed to make the FTPS test certificate")
        cert, key = self_signed(folder)
        ca_file = str(cert)
        both = folder / "server.pem"
        both.write_text(key.read_text() + cert.read_text())
        args += ["--cert", str(both)]
    log = (folder / "ftp.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=log)
    try:
        wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
        yield FtpServer(scheme, "127.0.0.1", port, root, USER, PASSWORD, ca_file)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    yield from _serve(tmp_path_factory.mktemp("ftp"), "ftp")


@pytest.fixture(scope="session")
def ftps_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    yield from _serve(tmp_path_factory.mktemp("ftps"), "ftps")
