"""The SFTP server with real clients: asyncssh and OpenSSH's `sftp`."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import asyncssh
import pytest
from sqlmodel import select

from ecpds.core.db import session_scope
from ecpds.core.models import DataFile, DataTransfer, TransferStatus

from .conftest import ALICE_PASSWORD, BOB_PASSWORD, Portal


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    """SQLite only: the catalog queries are the same as over HTTPS, which also runs on
    PostgreSQL; this keeps the suite's time down."""
    return f"sqlite:///{tmp_path / 'catalog.db'}"


def connect(port: int, user: str, password: str) -> asyncssh.SSHClientConnection:
    return asyncssh.connect(
        "127.0.0.1", port, username=user, password=password, known_hosts=None,
        client_keys=None,
    )  # type: ignore[return-value]  # fmt: skip


def test_asyncssh_put_list_get_rename_remove(
    sftp_port: int, portal: Portal, tmp_path: Path
) -> None:
    payload = os.urandom(2_500_000)
    source = tmp_path / "in.grib"
    source.write_bytes(payload)

    async def session() -> None:
        async with (
            connect(sftp_port, "alice", ALICE_PASSWORD) as conn,
            conn.start_sftp_client() as sftp,
        ):
            assert await sftp.listdir("/") == [".", "..", "alpha"]
            await sftp.put(str(source), "/alpha/obs/in.grib")
            await sftp.chdir("/alpha")
            assert await sftp.getcwd() == "/alpha"
            assert sorted(await sftp.listdir("obs")) == [".", "..", "in.grib"]
            assert (await sftp.stat("obs/in.grib")).size == len(payload)
            assert await sftp.isdir("obs")
            async with sftp.open("obs/in.grib", "rb") as handle:
                await handle.seek(1000)
                assert await handle.read(100) == payload[1000:1100]
            await sftp.get("/alpha/obs/in.grib", str(tmp_path / "out.grib"))
            await sftp.rename("/alpha/obs/in.grib", "/alpha/obs/renamed.grib")
            assert await sftp.exists("/alpha/obs/renamed.grib")
            assert not await sftp.exists("/alpha/obs/in.grib")
            await sftp.remove("/alpha/obs/renamed.grib")
            assert await sftp.listdir("/alpha") == [".", ".."]

    asyncio.run(session())
    assert (tmp_path / "out.grib").read_bytes() == payload
    with session_scope(portal.engine) as session:
        transfer = session.exec(select(DataTransfer)).one()
        assert transfer.status == TransferStatus.DONE
        assert transfer.deleted


@pytest.mark.skipif(shutil.which("sftp") is None, reason="OpenSSH sftp client is not installed")
def test_openssh_sftp_with_key(
    sftp_port: int,
    portal: Portal,
    tmp_path: Path,
    alice_key: tuple[Path, asyncssh.SSHKey],
) -> None:
    source = tmp_path / "forecast.bin"
    source.write_bytes(os.urandom(3_000_000))
    batch = tmp_path / "batch"
    batch.write_text(
        f"cd /alpha\nput {source} forecast.bin\nls -l\nget forecast.bin {tmp_path / 'back.bin'}\n"
    )
    result = subprocess.run(
        ["sftp", "-b", str(batch), "-P", str(sftp_port), "-i", str(alice_key[0]),
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "PasswordAuthentication=no", "-o", "BatchMode=yes", "alice@127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "forecast.bin" in result.stdout
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    with session_scope(portal.engine) as session:
        data_file = session.exec(select(DataFile)).one()
        assert data_file.md5 == hashlib.md5(source.read_bytes()).hexdigest()


def test_sftp_users_are_kept_apart(sftp_port: int, portal: Portal, tmp_path: Path) -> None:
    async def session() -> None:
        async with (
            connect(sftp_port, "alice", ALICE_PASSWORD) as conn,
            conn.start_sftp_client() as sftp,
            sftp.open("/alpha/private.txt", "wb") as handle,
        ):
            await handle.write(b"alice only")
        async with (
            connect(sftp_port, "bob", BOB_PASSWORD) as conn,
            conn.start_sftp_client() as sftp,
        ):
            assert await sftp.listdir("/") == [".", "..", "beta"]
            for path in (
                "/alpha/private.txt",
                "/beta/../alpha/private.txt",
                "../alpha/private.txt",
                "/beta/%2e%2e/alpha/private.txt",
                "/beta/..\\alpha\\private.txt",
                "/../../etc/passwd",
            ):
                with pytest.raises(asyncssh.SFTPError):
                    async with sftp.open(path, "rb") as handle:
                        await handle.read()
            with pytest.raises(asyncssh.SFTPError):
                await sftp.listdir("/alpha")
            with pytest.raises(asyncssh.SFTPError):
                async with sftp.open("/alpha/evil.txt", "wb") as handle:
                    await handle.write(b"x")
            with pytest.raises(asyncssh.SFTPError):
                await sftp.remove("/alpha/private.txt")
            with pytest.raises(asyncssh.SFTPError):
                await sftp.rename("/beta/x", "/alpha/x")
            with pytest.raises(asyncssh.SFTPError):
                await sftp.symlink("/alpha/private.txt", "/beta/link")
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(sftp_port, "bob", "wrong-password"):
                pass

    asyncio.run(session())
    with session_scope(portal.engine) as session:
        assert len(session.exec(select(DataFile)).all()) == 1


def test_broken_sftp_upload_leaves_nothing(sftp_port: int, portal: Portal) -> None:
    async def session() -> None:
        conn = await connect(sftp_port, "alice", ALICE_PASSWORD)
        sftp = await conn.start_sftp_client()
        handle = await sftp.open("/alpha/partial.bin", "wb")
        for _ in range(40):
            await handle.write(os.urandom(64 * 1024))
        conn.abort()
        await asyncio.sleep(0.5)

    asyncio.run(session())
    with session_scope(portal.engine) as session:
        assert session.exec(select(DataFile)).all() == []
    assert portal.store.partials() == []


def test_the_keyed_umac_signs_as_asyncssh_does() -> None:
    """The portal's UMAC (keyed once per direction) gives asyncssh's own tags, packet by
    packet, whatever the order of the sequence numbers."""
    import asyncssh.mac

    import ecpds.portal.sftp as portal_sftp

    umacs = [alg for alg in asyncssh.mac.get_mac_algs() if alg.startswith(b"umac")]
    assert umacs
    for alg in umacs:
        handler, size, args = asyncssh.mac._mac_handler[alg]
        assert handler is portal_sftp._KeyedUMAC
        key = os.urandom(16)
        ours, theirs = asyncssh.mac.get_mac(alg, key), asyncssh.mac._UMAC(key, size, *args)
        for seq in [0, 1, 2, 7, 3, 0xFFFFFFFF, 5, 5]:
            packet = os.urandom(seq % 40_000 + 1)
            tag = theirs.sign(seq, packet)
            assert ours.sign(seq, packet) == tag
            assert ours.verify(seq, packet, tag)
            assert not ours.verify(seq + 1, packet, tag)
