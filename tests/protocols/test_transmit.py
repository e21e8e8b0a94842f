"""transmit.send to real file and SFTP hosts: content, checksums, resume, compression."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from peers.ftp import FtpServer
from peers.sshd import SshServer

from ecpds.core.protocols import ProtocolError
from ecpds.core.protocols.pool import REMOTES
from ecpds.core.store import Store
from ecpds.core.transmit import SendRequest, partial_offset, send


def _stored(store: Store, data: bytes) -> tuple[str, str]:
    object_id = os.urandom(8).hex()
    obj = store.write(object_id, [data])
    return object_id, obj.adler32


def _request(object_id: str, size: int, adler: str, url: str, **kw) -> SendRequest:
    return SendRequest(
        data_file_id=object_id,
        size=size,
        adler32=adler,
        host_name="h1",
        host_url=url,
        host_options=kw.pop("options", {}),
        target=kw.pop("target", "out/a/b/file.bin"),
        **kw,
    )


def _sent_once(
    store: Store, ftp_server: FtpServer, folder: str, data: bytes, target: str, timeout: int
) -> tuple[SendRequest, dict[str, str], str]:
    """`data` sent once as `target` under `folder` of the FTP server, with its own
    `timeout` (so the session pool keys it apart); the request, credentials and URL."""
    object_id, adler = _stored(store, data)
    url, creds = ftp_server.url(folder), {"password": ftp_server.password}
    options = {"timeout": timeout}
    request = _request(object_id, len(data), adler, url, target=target, options=options)
    send(store, request, creds, progress=lambda n: None)
    return request, creds, url


def test_send_to_file_host(store: Store, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    object_id, adler = _stored(store, data)
    seen: list[int] = []
    request = _request(
        object_id,
        len(data),
        adler,
        f"file://{tmp_path / 'remote'}",
        options={"md5_sidecar": True, "mode": "640", "chunk_size": 1 << 20},
        checksums=("sha256",),
    )
    result = send(store, request, {}, progress=seen.append)
    delivered = tmp_path / "remote/out/a/b/file.bin"
    assert delivered.read_bytes() == data
    assert result.md5 == hashlib.md5(data).hexdigest()
    assert result.extra["sha256"] == hashlib.sha256(data).hexdigest()
    assert result.remote_size == result.bytes_sent == len(data)
    assert seen[-1] == len(data)
    assert oct(delivered.stat().st_mode & 0o777) == "0o640"
    assert (tmp_path / "remote/out/a/b/file.bin.md5").read_text().split()[0] == result.md5
    assert sorted(p.name for p in delivered.parent.iterdir()) == ["file.bin", "file.bin.md5"]


def test_send_compressed_records_compressed_size(store: Store, tmp_path: Path) -> None:
    data = b"forecast " * 200_000
    object_id, adler = _stored(store, data)
    request = _request(
        object_id, len(data), adler, f"file://{tmp_path}", compression="gzip", target="f.grib"
    )
    result = send(store, request, {}, progress=lambda n: None)
    assert result.target == "f.grib.gz"
    packed = (tmp_path / "f.grib.gz").read_bytes()
    assert result.remote_size == len(packed) < len(data)
    assert zlib.decompress(packed, 31) == data
    assert result.extra["compression"] == "gzip"


ENGINES = pytest.mark.parametrize("engine", ["openssh", "asyncssh"])


@ENGINES
def test_sftp_key_login_resume_and_fingerprint(store: Store, sshd: SshServer, engine: str) -> None:
    data = os.urandom(5 * 1024 * 1024 + 3)
    object_id, adler = _stored(store, data)
    folder = sshd.folder(f"resume-{engine}")
    url = sshd.url(folder)
    creds = {"private_key": sshd.private_key}
    options = {"host_key": sshd.host_key, "mode": "600", "engine": engine}
    request = _request(object_id, len(data), adler, url, options=options, target="x/y.bin")
    # An earlier attempt broke off after 2 MiB: its partial file is where a resume looks.
    staging = folder / "x" / ".y.bin.ecpds-part"
    staging.parent.mkdir()
    staging.write_bytes(data[: 2 * 1024 * 1024])
    offset = partial_offset(request, creds)
    assert offset == 2 * 1024 * 1024
    resumed = SendRequest(**{**request.__dict__, "resume_offset": offset})
    result = send(store, resumed, creds, progress=lambda n: None)
    assert result.bytes_sent == len(data) - offset
    assert (folder / "x/y.bin").read_bytes() == data
    assert result.md5 == hashlib.md5(data).hexdigest()
    assert not staging.exists()
    assert oct((folder / "x/y.bin").stat().st_mode & 0o777) == "0o600"


@ENGINES
def test_sftp_password_login(store: Store, sshd: SshServer, engine: str) -> None:
    if sshd.password_user is None:
        pytest.skip("password login needs the tests to run as root")
    data = os.urandom(100_000)
    object_id, adler = _stored(store, data)
    folder = sshd.folder(f"password-{engine}")
    url = sshd.url(folder, user=sshd.password_user)
    request = _request(object_id, len(data), adler, url, target="p.bin", options={"engine": engine})
    send(store, request, {"password": sshd.password}, progress=lambda n: None)
    assert (folder / "p.bin").read_bytes() == data
    with pytest.raises(ProtocolError) as info:
        send(store, request, {"password": "wrong-password"}, progress=lambda n: None)
    assert "authentication failed" in str(info.value)
    assert "h1" in str(info.value) and "sftp" in str(info.value)


@ENGINES
def test_sftp_wrong_host_key_is_refused(store: Store, sshd: SshServer, engine: str) -> None:
    object_id, adler = _stored(store, b"x")
    folder = sshd.folder(f"pinned-{engine}")
    options = {"host_key": "SHA256:not-the-key", "engine": engine}
    request = _request(object_id, 1, adler, sshd.url(folder), options=options, target="k")
    with pytest.raises(ProtocolError, match="does not match") as info:
        send(store, request, {"private_key": sshd.private_key}, progress=lambda n: None)
    assert sshd.host_key in str(info.value)  # the key the server offered, to check by hand
    assert list(folder.iterdir()) == []


def test_compressed_upload_restarts_instead_of_resuming(store: Store, sshd: SshServer) -> None:
    data = os.urandom(3 << 20)
    object_id, adler = _stored(store, data)
    folder = sshd.folder("compressed-restart")
    request = _request(
        object_id, len(data), adler, sshd.url(folder), target="c.bin", compression="gzip"
    )
    creds = {"private_key": sshd.private_key}
    (folder / ".c.bin.gz.ecpds-part").write_bytes(b"stale bytes of an earlier attempt")
    assert partial_offset(request, creds) == 0
    result = send(store, replace(request, resume_offset=33), creds, progress=lambda n: None)
    assert result.bytes_sent == result.remote_size
    assert zlib.decompress((folder / "c.bin.gz").read_bytes(), 31) == data


def test_ftp_active_mode(store: Store, ftp_server: FtpServer) -> None:
    data = os.urandom(300_000)
    object_id, adler = _stored(store, data)
    (ftp_server.root / "active").mkdir()
    request = _request(
        object_id, len(data), adler, ftp_server.url("active"), options={"passive": False},
        target="a.bin",
    )  # fmt: skip
    send(store, request, {"password": ftp_server.password}, progress=lambda n: None)
    assert (ftp_server.root / "active/a.bin").read_bytes() == data


def test_ftps_certificate_check(store: Store, ftps_server: FtpServer) -> None:
    object_id, adler = _stored(store, b"tls")
    (ftps_server.root / "tls").mkdir()
    creds = {"password": ftps_server.password}
    request = _request(object_id, 3, adler, ftps_server.url("tls"), target="t.bin")
    with pytest.raises(ProtocolError, match="TLS certificate not trusted") as info:
        send(store, request, creds, progress=lambda n: None)
    assert "ftps host h1" in str(info.value)
    unchecked = replace(request, host_options={"verify_tls": False})
    send(store, unchecked, creds, progress=lambda n: None)
    assert (ftps_server.root / "tls/t.bin").read_bytes() == b"tls"


def test_connections_are_reused_and_dead_ones_replaced(store: Store, ftp_server: FtpServer) -> None:
    (ftp_server.root / "pool").mkdir()
    request, creds, url = _sent_once(store, ftp_server, "pool", b"pooled", "one.bin", 11)
    with REMOTES.remote("h1", url, {"timeout": 11}, creds) as first:
        pass
    send(store, replace(request, target="two.bin"), creds, progress=lambda n: None)
    with REMOTES.remote("h1", url, {"timeout": 11}, creds) as second:
        assert second is first  # the same logged-in FTP session served both
        second.ftp.sock.close()  # the server side goes away while it idles
    send(store, replace(request, target="three.bin"), creds, progress=lambda n: None)
    assert sorted(p.name for p in (ftp_server.root / "pool").iterdir()) == [
        "one.bin",
        "three.bin",
        "two.bin",
    ]


def test_pool_closes_spare_idle_connections_first(ftp_server: FtpServer) -> None:
    """After a parallel burst, the last connection returned stays for the next transfer;
    the others are closed once `spare_idle` has passed (here at once)."""
    from ecpds.core.protocols.pool import RemotePool

    pool = RemotePool(idle=3600, spare_idle=0)
    url, creds = ftp_server.url(""), {"password": ftp_server.password}
    with (
        pool.remote("h1", url, {}, creds) as last,
        pool.remote("h1", url, {}, creds) as spare,  # returned first
    ):
        assert spare is not last
    pool._expire()
    assert not spare.alive()
    with pool.remote("h1", url, {}, creds) as again:
        assert again is last and again.alive()
    pool.close()


def test_ftps_tls13_can_be_turned_off(ftps_server: FtpServer) -> None:
    """For servers whose TLS 1.3 is broken (rclone has the same switch)."""
    from ecpds.core.protocols import open_remote

    url, creds = ftps_server.url(""), {"password": ftps_server.password}
    seen = []
    for options in ({}, {"tls13": False}):
        with open_remote("h1", url, {"ca_file": ftps_server.ca_file, **options}, creds) as remote:
            seen.append(remote.ftp.sock.version())
    assert seen == ["TLSv1.3", "TLSv1.2"]


def test_ftp_folder_removed_between_uploads_is_made_again(
    store: Store, ftp_server: FtpServer
) -> None:
    """A session makes a folder once; when someone removes it, the next upload remakes it."""
    request, creds, url = _sent_once(store, ftp_server, "remade", b"again", "x/one.bin", 12)
    with REMOTES.remote("h1", url, {"timeout": 12}, creds) as remote:
        assert "/remade/x" in remote.folders  # type: ignore[attr-defined]
    shutil.rmtree(ftp_server.root / "remade")
    send(store, replace(request, target="x/two.bin"), creds, progress=lambda n: None)
    with REMOTES.remote("h1", url, {"timeout": 12}, creds) as again:
        assert again is remote  # the same session sent both
    assert (ftp_server.root / "remade/x/two.bin").read_bytes() == b"again"


def test_ftp_session_the_server_closed_is_not_reused(store: Store, ftp_server: FtpServer) -> None:
    """Right after a transfer, alive() sends no NOOP, yet sees a session the server ended."""
    (ftp_server.root / "ended").mkdir()
    request, creds, url = _sent_once(store, ftp_server, "ended", b"closed", "one.bin", 13)
    with REMOTES.remote("h1", url, {"timeout": 13}, creds) as remote:
        assert remote.alive()
        # Behind ftplib's back: the server answers 221 and closes the connection.
        remote.ftp.sock.sendall(b"QUIT\r\n")  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while remote.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not remote.alive()
    send(store, replace(request, target="two.bin"), creds, progress=lambda n: None)
    assert sorted(p.name for p in (ftp_server.root / "ended").iterdir()) == ["one.bin", "two.bin"]
