"""Conformance peers for file, SFTP, FTP(S), WebDAV and HTTPS upload, each on a real server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from peers.conformance import Peer
from peers.disk import small_disk
from peers.ftp import FtpServer
from peers.httpd import HttpServer
from peers.nginx import nginx_server  # noqa: F401  (the fixture, for test_listing)
from peers.sshd import SshServer

from ecpds.core.devserver import free_port
from ecpds.core.protocols import openssh

# Without mkdirs, a folder that is not there is what a missing bucket is to S3.
NO_MKDIRS = {"missing_container": {"mkdirs": False}}


def _local_checks(folder: Path) -> dict:
    def read(target: str) -> bytes | None:
        path = folder / target
        return path.read_bytes() if path.is_file() else None

    def names() -> list[str]:
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    return {"read": read, "names": names}


def _stranger_key() -> str:
    """A private key the server has never heard of."""
    return asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()


@pytest.fixture
def file_peer(tmp_path: Path) -> Iterator[Peer]:
    folder = tmp_path / "remote"
    folder.mkdir()
    with small_disk(tmp_path / "full") as full:
        yield Peer(
            url=f"file://{folder}",
            options={},
            credentials={},
            resumable=True,
            missing_container_url=f"file://{folder}/missing",
            error_options=NO_MKDIRS,
            full_disk_url=f"file://{full}" if full else None,
            **_local_checks(folder),
        )


def _sftp_peer(sshd: SshServer, engine: str) -> Iterator[Peer]:
    folder = sshd.folder(f"c-{uuid.uuid4().hex[:8]}")
    with small_disk(folder.parent / f"{folder.name}-full") as full:
        yield Peer(
            url=sshd.url(folder),
            options={"host_key": sshd.host_key, "engine": engine},
            credentials={"private_key": sshd.private_key},
            resumable=True,
            bad_credentials={"private_key": _stranger_key()},
            unknown_host_url=f"sftp://{sshd.key_user}@no-such-host.invalid/{folder}",
            refused_url=f"sftp://{sshd.key_user}@127.0.0.1:{free_port()}/{folder}",
            missing_container_url=sshd.url(folder / "missing"),
            error_options=NO_MKDIRS,
            full_disk_url=sshd.url(full) if full else None,
            **_local_checks(folder),
        )


@pytest.fixture
def sftp_peer(sshd: SshServer) -> Iterator[Peer]:
    """SFTP through the OpenSSH client, the engine a worker with `ssh` installed uses."""
    if openssh.client() is None:
        pytest.skip("no OpenSSH client 8.5 or newer on PATH (run tests/peers/install.sh)")
    yield from _sftp_peer(sshd, "openssh")


@pytest.fixture
def sftp_asyncssh_peer(sshd: SshServer) -> Iterator[Peer]:
    """SFTP through sshfs/asyncssh, the engine where no OpenSSH client is installed."""
    yield from _sftp_peer(sshd, "asyncssh")


def _ftp_peer(server: FtpServer) -> Iterator[Peer]:
    name = f"c-{uuid.uuid4().hex[:8]}"
    folder = server.root / name
    folder.mkdir()
    folder.chmod(0o777)  # vsftpd writes as a local user, not as the tests' user
    options = {"ca_file": server.ca_file} if server.ca_file else {}
    with small_disk(server.root / f"{name}-full") as full:
        yield Peer(
            url=server.url(name),
            options=options,
            credentials={"password": server.password},
            resumable=True,
            bad_credentials={"password": "wrong-password"},
            unknown_host_url=f"{server.scheme}://{server.user}@no-such-host.invalid/{name}",
            refused_url=f"{server.scheme}://{server.user}@127.0.0.1:{free_port()}/{name}",
            # The plain upload server makes folders itself; WebDAV needs MKCOL.
            missing_container_url=server.url(f"{name}/missing") if server.user else None,
            error_options=NO_MKDIRS,
            full_disk_url=server.url(f"{name}-full") if full else None,
            **_local_checks(folder),
        )


@pytest.fixture
def ftp_peer(ftp_server: FtpServer) -> Iterator[Peer]:
    yield from _ftp_peer(ftp_server)


@pytest.fixture
def ftps_peer(ftps_server: FtpServer) -> Iterator[Peer]:
    yield from _ftp_peer(ftps_server)


@pytest.fixture
def ftps_vsftpd_peer(vsftpd_server: FtpServer) -> Iterator[Peer]:
    """vsftpd insisting on TLS session reuse on the data channel, as it does by default."""
    yield from _ftp_peer(vsftpd_server)


def _http_peer(server: HttpServer, options: dict) -> Iterator[Peer]:
    name = f"c-{uuid.uuid4().hex[:8]}"
    folder = server.root / name
    folder.mkdir()
    if server.ca_file:
        options = {**options, "ca_file": server.ca_file}
    bad = {"password": "wrong-password"} if server.user else {"token": "wrong-token"}
    port = free_port()
    with small_disk(server.root / f"{name}-full") as full:
        yield Peer(
            url=server.url(name),
            options=options,
            credentials=server.credentials,
            resumable=False,
            bad_credentials=bad,
            unknown_host_url=server.url(name).replace("127.0.0.1", "no-such-host.invalid"),
            refused_url=server.url(name).replace(f":{server.port}/", f":{port}/"),
            # The plain upload server makes folders itself; WebDAV needs MKCOL.
            missing_container_url=server.url(f"{name}/missing") if server.user else None,
            error_options=NO_MKDIRS,
            full_disk_url=server.url(f"{name}-full") if full else None,
            **_local_checks(folder),
        )


@pytest.fixture
def webdav_peer(webdav_server: HttpServer) -> Iterator[Peer]:
    yield from _http_peer(webdav_server, {"method": "webdav"})


@pytest.fixture
def https_put_peer(https_upload_server: HttpServer) -> Iterator[Peer]:
    yield from _http_peer(https_upload_server, {"method": "put"})


@pytest.fixture
def https_post_peer(https_upload_server: HttpServer) -> Iterator[Peer]:
    yield from _http_peer(https_upload_server, {"method": "post"})
