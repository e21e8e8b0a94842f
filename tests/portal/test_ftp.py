"""The FTP/FTPS server with the standard library's ftplib as the client."""

from __future__ import annotations

import ftplib
import io
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlmodel import select

from ecpds.core.db import session_scope
from ecpds.core.devserver import free_port, wait_for_port
from ecpds.core.models import DataFile, DataTransfer, TransferStatus
from ecpds.core.settings import Settings
from ecpds.portal import ftp as ftp_module

from .conftest import ALICE_PASSWORD, BOB_PASSWORD, LoopThread, Portal


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    """SQLite only: the catalog queries are the same as over HTTPS, which also runs on
    PostgreSQL; this keeps the suite's time down."""
    return f"sqlite:///{tmp_path / 'catalog.db'}"


def login(port: int, user: str, password: str, tls: bool = False) -> ftplib.FTP:
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        ftp: ftplib.FTP = ftplib.FTP_TLS(context=context, timeout=30)
    else:
        ftp = ftplib.FTP(timeout=30)
    ftp.connect("127.0.0.1", port)
    ftp.login(user, password)
    if isinstance(ftp, ftplib.FTP_TLS):
        ftp.prot_p()
    return ftp


@pytest.mark.parametrize("tls", [False, True], ids=["ftp", "ftps"])
def test_ftplib_store_list_retrieve(ftp_port: int, portal: Portal, tls: bool) -> None:
    payload = os.urandom(2_000_000)
    ftp = login(ftp_port, "alice", ALICE_PASSWORD, tls)
    try:
        assert ftp.nlst() == ["alpha"]
        ftp.cwd("alpha")
        assert ftp.pwd() == "/alpha"
        ftp.storbinary("STOR model/run.grib", io.BytesIO(payload))
        assert ftp.nlst("model") == ["run.grib"]
        lines: list[str] = []
        ftp.retrlines("LIST model", lines.append)
        assert len(lines) == 1 and lines[0].endswith(" run.grib") and str(len(payload)) in lines[0]
        facts = dict(ftp.mlsd("model"))
        assert facts["run.grib"]["size"] == str(len(payload))
        ftp.voidcmd("TYPE I")
        assert ftp.size("/alpha/model/run.grib") == len(payload)
        with session_scope(portal.engine) as session:
            assert session.exec(select(DataTransfer.status)).one() == TransferStatus.HOLD
        tail = bytearray()
        ftp.retrbinary("RETR model/run.grib", tail.extend, rest=1_999_000)
        assert bytes(tail) == payload[1_999_000:]
        with session_scope(portal.engine) as session:
            assert session.exec(select(DataTransfer.status)).one() == TransferStatus.HOLD
        whole = bytearray()
        ftp.retrbinary("RETR /alpha/model/run.grib", whole.extend)
        assert bytes(whole) == payload
        ftp.rename("model/run.grib", "model/renamed.grib")
        ftp.delete("model/renamed.grib")
        for _ in range(5):  # empty listings, over TLS too
            assert ftp.nlst() == []
        ftp.storbinary("STOR note.txt", io.BytesIO(b"n"))
        assert ftp.nlst() == ["note.txt"]
    finally:
        ftp.quit()
    with session_scope(portal.engine) as session:
        transfer = session.exec(select(DataTransfer).order_by(DataTransfer.id)).first()
        assert transfer is not None
        assert transfer.status == TransferStatus.DONE
        assert transfer.deleted


def test_ftp_users_are_kept_apart(ftp_port: int, portal: Portal) -> None:
    alice = login(ftp_port, "alice", ALICE_PASSWORD)
    alice.storbinary("STOR /alpha/private.txt", io.BytesIO(b"alice only"))
    alice.quit()
    bob = login(ftp_port, "bob", BOB_PASSWORD)
    try:
        assert bob.nlst("/") == ["beta"]
        for path in (
            "/alpha/private.txt",
            "/beta/../alpha/private.txt",
            "../alpha/private.txt",
            "/beta/%2e%2e/alpha/private.txt",
            "/beta/..\\alpha\\private.txt",
        ):
            with pytest.raises(ftplib.error_perm):
                bob.retrbinary(f"RETR {path}", lambda _: None)
        with pytest.raises(ftplib.error_perm):
            bob.cwd("/alpha")
        with pytest.raises(ftplib.error_perm):
            bob.storbinary("STOR /alpha/evil.txt", io.BytesIO(b"x"))
        with pytest.raises(ftplib.error_perm):
            bob.delete("/alpha/private.txt")
        with pytest.raises(ftplib.error_perm):
            bob.cwd("/../..")
    finally:
        bob.quit()
    with pytest.raises(ftplib.error_perm) as refused:
        login(ftp_port, "bob", "wrong-password")
    assert str(refused.value).startswith("530")
    with session_scope(portal.engine) as session:
        assert len(session.exec(select(DataFile)).all()) == 1


def test_broken_ftp_upload_leaves_nothing(ftp_port: int, portal: Portal) -> None:
    ftp = login(ftp_port, "alice", ALICE_PASSWORD)
    ftp.voidcmd("TYPE I")
    data = ftp.transfercmd("STOR /alpha/partial.bin")
    data.sendall(os.urandom(3_000_000))
    # Cut both connections without ending the transfer properly.
    data.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    data.close()
    ftp.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    ftp.sock.close()
    for _ in range(50):
        time.sleep(0.1)
        if not portal.store.partials():
            break
    with session_scope(portal.engine) as session:
        assert session.exec(select(DataFile)).all() == []
    assert portal.store.partials() == []


def test_a_listing_does_not_hide_another_sessions_change_for_long(
    ftp_port: int, portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another session (here or on another portal replica) replaces a listed file."""
    reader = login(ftp_port, "alice", ALICE_PASSWORD)
    writer = login(ftp_port, "alice", ALICE_PASSWORD)
    try:
        writer.storbinary("STOR /alpha/f.bin", io.BytesIO(b"short"))
        assert reader.nlst("/alpha") == ["f.bin"]
        writer.storbinary("STOR /alpha/f.bin", io.BytesIO(b"much longer now"))
        monkeypatch.setattr(ftp_module, "LISTING_SECONDS", 0)
        reader.voidcmd("TYPE I")
        assert reader.size("/alpha/f.bin") == len(b"much longer now")
    finally:
        reader.quit()
        writer.quit()


def test_passive_data_channels_use_the_configured_ports(
    portal: Portal, loop_thread: LoopThread, certificate: tuple[Path, Path]
) -> None:
    """A container publishes ftp_port and the passive range only: every data channel,
    plain and TLS, must be on one of those ports."""
    passive = free_port()
    wanted = Settings(ftp_passive_ports=f" {passive}-{passive} ").ftp_passive_range
    assert wanted == range(passive, passive + 1)
    port = free_port()
    server = ftp_module.build_server(
        portal.fs,
        loop_thread.loop,
        "127.0.0.1",
        port,
        certificate=certificate,
        passive_ports=wanted,
    )
    stop = threading.Event()
    thread = ftp_module.run_in_thread(server, stop)
    try:
        wait_for_port("127.0.0.1", port, timeout=20)
        for tls in (False, True):
            ftp = login(port, "alice", ALICE_PASSWORD, tls)
            try:
                assert ftp.makepasv()[1] == passive
                ftp.storbinary("STOR alpha/passive.bin", io.BytesIO(b"p" * 1000))
                assert ftp.size("alpha/passive.bin") == 1000
                assert ftp.nlst("alpha") == ["passive.bin"]
                ftp.delete("alpha/passive.bin")
            finally:
                ftp.quit()
    finally:
        stop.set()
        thread.join(15)


@pytest.mark.parametrize("text", ["4100", "4100-", "x-4101", "4101-4100", "80-90", "4100-70000"])
def test_a_bad_passive_range_is_one_line(text: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(ftp_passive_ports=text)
    message = refused.value.errors()[0]["msg"]
    assert repr(text) in message and "\n" not in message


def test_pasv_replies_name_the_public_host_by_its_address() -> None:
    """A PASV reply carries an IPv4 address in numbers: a public_host that is a name (as
    in the compose and Kubernetes settings) is resolved, not sent as is."""
    assert ftp_module.passive_address("127.0.0.1", "127.0.0.1") is None  # nothing to mask
    assert ftp_module.passive_address("192.0.2.7", "0.0.0.0") == "192.0.2.7"
    assert ftp_module.passive_address("localhost", "0.0.0.0") == "127.0.0.1"
