"""Everyday clients against the real portal: rclone, lftp and OpenSSH, as users run them."""

from __future__ import annotations

import asyncio
import ftplib
import hashlib
import io
import os
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import pytest
from peers.sshd import SshServer
from sqlmodel import select

from ecpds.core.db import session_scope
from ecpds.core.models import DataFile, DataTransfer
from ecpds.core.protocols import open_remote
from ecpds.portal.sftp import REORDER_BYTES

from .conftest import ALICE_PASSWORD, Portal

RCLONE = shutil.which("rclone")
LFTP = shutil.which("lftp")
OPENSSH_SFTP = shutil.which("sftp")
needs_rclone = pytest.mark.skipif(RCLONE is None, reason="rclone is not installed")
needs_lftp = pytest.mark.skipif(LFTP is None, reason="lftp is not installed")
needs_openssh = pytest.mark.skipif(OPENSSH_SFTP is None, reason="OpenSSH sftp is not installed")


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    """SQLite only: the catalog queries are the same as over HTTPS, which also runs on
    PostgreSQL; this keeps the suite's time down."""
    return f"sqlite:///{tmp_path / 'catalog.db'}"


def make_tree(root: Path) -> dict[str, bytes]:
    """A folder tree to upload: a file big enough for many concurrent writes, a small one,
    one in a sub-folder."""
    files = {
        "big.bin": os.urandom(9_000_000),
        "note.txt": b"a small note\n",
        "sub/deep.bin": os.urandom(700_000),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def stored(portal: Portal) -> dict[str, str]:
    """Live target name -> MD5 of what the portal holds."""
    with session_scope(portal.engine) as session:
        rows = session.exec(
            select(DataTransfer.target, DataFile.md5)
            .join(DataFile, DataFile.id == DataTransfer.data_file_id)  # type: ignore[arg-type]
            .where(DataTransfer.deleted == False)  # noqa: E712
        ).all()
    return {target: md5 for target, md5 in rows}


def md5s(files: dict[str, bytes], prefix: str) -> dict[str, str]:
    return {f"{prefix}{name}": hashlib.md5(data).hexdigest() for name, data in files.items()}


def rclone(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert RCLONE is not None
    return subprocess.run(
        [RCLONE, "--config", "/dev/null", "--low-level-retries", "1", "--retries", "1", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip


def obscured(password: str) -> str:
    assert RCLONE is not None
    return subprocess.run(
        [RCLONE, "obscure", password], capture_output=True, text=True, check=True
    ).stdout.strip()


def sftp_remote(port: int, key_file: Path) -> dict[str, str]:
    return {
        "RCLONE_CONFIG_PORTAL_TYPE": "sftp",
        "RCLONE_CONFIG_PORTAL_HOST": "127.0.0.1",
        "RCLONE_CONFIG_PORTAL_PORT": str(port),
        "RCLONE_CONFIG_PORTAL_USER": "alice",
        "RCLONE_CONFIG_PORTAL_KEY_FILE": str(key_file),
    }


def ftp_remote(port: int, tls: bool) -> dict[str, str]:
    env = {
        "RCLONE_CONFIG_PORTAL_TYPE": "ftp",
        "RCLONE_CONFIG_PORTAL_HOST": "127.0.0.1",
        "RCLONE_CONFIG_PORTAL_PORT": str(port),
        "RCLONE_CONFIG_PORTAL_USER": "alice",
        "RCLONE_CONFIG_PORTAL_PASS": obscured(ALICE_PASSWORD),
    }
    if tls:
        env |= {
            "RCLONE_CONFIG_PORTAL_EXPLICIT_TLS": "true",
            "RCLONE_CONFIG_PORTAL_NO_CHECK_CERTIFICATE": "true",
        }
    return env


# --- SFTP -------------------------------------------------------------------------------------


async def alice_ssh(port: int) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1", port, username="alice", password=ALICE_PASSWORD,
        known_hosts=None, client_keys=None,
    )  # fmt: skip


@asynccontextmanager
async def alice_sftp(port: int) -> AsyncIterator[asyncssh.SFTPClient]:
    async with await alice_ssh(port) as conn, conn.start_sftp_client() as sftp:
        yield sftp


@needs_rclone
def test_rclone_copies_a_tree_up_and_down_over_sftp(
    sftp_port: int, portal: Portal, tmp_path: Path, alice_key: tuple[Path, asyncssh.SSHKey]
) -> None:
    """rclone pads its write packets and writes a file's chunks concurrently, out of order."""
    source, back = tmp_path / "up", tmp_path / "down"
    source.mkdir()
    files = make_tree(source)
    env = sftp_remote(sftp_port, alice_key[0])
    up = rclone("copy", str(source), "portal:/alpha/tree", env=env)
    assert up.returncode == 0, up.stderr
    assert stored(portal) == md5s(files, "tree/")
    listed = rclone("lsf", "-R", "--files-only", "portal:/alpha/tree", env=env)
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split()) == sorted(files)
    down = rclone("copy", "portal:/alpha/tree", str(back), env=env)
    assert down.returncode == 0, down.stderr
    for name, data in files.items():
        assert (back / name).read_bytes() == data


@needs_openssh
def test_openssh_sftp_puts_a_tree_up(
    sftp_port: int, portal: Portal, tmp_path: Path, alice_key: tuple[Path, asyncssh.SSHKey]
) -> None:
    """put -r makes each folder (mkdir), then puts its files; the empty folder stays."""
    assert OPENSSH_SFTP is not None
    source = tmp_path / "up"
    source.mkdir()
    files = make_tree(source)
    (source / "empty").mkdir()
    batch = tmp_path / "batch"
    batch.write_text(f"put -r {source} /alpha/tree\nls -1 /alpha/tree\n")
    result = subprocess.run(
        [OPENSSH_SFTP, "-b", str(batch), "-P", str(sftp_port), "-i", str(alice_key[0]),
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "PasswordAuthentication=no", "-o", "BatchMode=yes", "alice@127.0.0.1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert stored(portal) == md5s(files, "tree/")
    listed = [line.rsplit("/", 1)[-1] for line in result.stdout.split() if "/alpha/tree/" in line]
    assert sorted(listed) == ["big.bin", "empty", "note.txt", "sub"]


@needs_openssh
def test_the_sftp_door_sends_no_empty_ignore_packets(
    sftp_port: int, tmp_path: Path, alice_key: tuple[Path, asyncssh.SSHKey]
) -> None:
    """asyncssh would put an SSH_MSG_IGNORE (type 2) before every packet, a guard for CBC
    ciphers the door does not offer: OpenSSH's debug log names each one it receives.
    A 2 MiB round trip (about 130 data packets) must come with none of them."""
    assert OPENSSH_SFTP is not None
    payload = os.urandom(2 << 20)
    (tmp_path / "up.bin").write_bytes(payload)
    batch = tmp_path / "batch"
    batch.write_text(
        f"put {tmp_path / 'up.bin'} /alpha/up.bin\nget /alpha/up.bin {tmp_path}/down.bin\n"
    )
    result = subprocess.run(
        [OPENSSH_SFTP, "-vvv", "-b", str(batch), "-P", str(sftp_port), "-i", str(alice_key[0]),
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "PasswordAuthentication=no", "-o", "BatchMode=yes", "alice@127.0.0.1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "down.bin").read_bytes() == payload
    received = re.findall(r"receive packet: type (\d+)", result.stderr)
    assert "94" not in received  # channel data is not logged: the count below is not of it
    assert "91" in received  # the log names the packets it receives
    assert received.count("2") <= 4, f"{received.count('2')} ignore packets"


def test_sftp_writes_out_of_order_and_padded_are_accepted(
    sftp_port: int, portal: Portal, tmp_path: Path
) -> None:
    """What rclone sends, spelled out: chunks last-first, each write packet padded."""
    payload = os.urandom(3 * 1024 * 1024 + 123)
    chunk = 256 * 1024
    offsets = list(range(0, len(payload), chunk))

    async def session() -> None:
        async with alice_sftp(sftp_port) as sftp:
            handler = sftp._handler
            handle = await sftp.open("/alpha/reversed.bin", "wb")
            for offset in reversed(offsets):
                data = payload[offset : offset + chunk]
                await handler._make_request(
                    asyncssh.constants.FXP_WRITE,
                    asyncssh.packet.String(handle._handle),
                    asyncssh.packet.UInt64(offset),
                    asyncssh.packet.String(data),
                    b"\0" * 8,  # the padding some clients add after the data
                )
            await handle.close()

    asyncio.run(session())
    assert stored(portal) == {"reversed.bin": hashlib.md5(payload).hexdigest()}
    assert portal.store.partials() == []


def test_sftp_writes_far_out_of_order_are_spooled_to_disk(sftp_port: int, portal: Portal) -> None:
    """Further ahead than the reorder buffer holds: the rest goes through a temporary file."""
    payload = os.urandom(REORDER_BYTES + 2 * 1024 * 1024)
    chunk = 512 * 1024
    offsets = list(range(0, len(payload), chunk))
    # The first chunk comes last; one is written twice, first wrong: the second write wins.
    wrong = b"\xff" * chunk
    writes = [(offsets[3], wrong)]
    writes += [(o, payload[o : o + chunk]) for o in offsets[1:] if o != offsets[3]]
    writes += [(o, payload[o : o + chunk]) for o in (offsets[3], offsets[0])]

    async def session() -> None:
        async with (
            alice_sftp(sftp_port) as sftp,
            sftp.open("/alpha/spooled.bin", "wb") as handle,
        ):
            for offset, data in writes:
                await handle.write(data, offset)

    asyncio.run(session())
    assert stored(portal) == {"spooled.bin": hashlib.md5(payload).hexdigest()}
    assert portal.store.partials() == []
    assert list((portal.home / "sftp-spool").iterdir()) == []


def test_a_refused_sftp_write_does_not_hang_the_session(sftp_port: int, portal: Portal) -> None:
    async def session() -> None:
        async with alice_sftp(sftp_port) as sftp:
            handle = await sftp.open("/alpha/rewritten.bin", "wb")
            await handle.write(os.urandom(2_000_000), 0)
            # Bytes already passed on to the store cannot be written again: refused...
            with pytest.raises(asyncssh.SFTPFailure):
                await asyncio.wait_for(handle.write(b"again", 10), 20)
            # ... and the session still answers, on this handle and others.
            with pytest.raises(asyncssh.SFTPFailure):
                await asyncio.wait_for(handle.write(b"more", 2_000_000), 20)
            assert await asyncio.wait_for(sftp.listdir("/alpha"), 20) == [".", ".."]
            with pytest.raises(asyncssh.SFTPFailure):
                await asyncio.wait_for(handle.close(), 20)
            async with sftp.open("/alpha/fine.txt", "wb") as fine:
                await fine.write(b"fine")
            assert await asyncio.wait_for(sftp.listdir("/alpha"), 20) == [".", "..", "fine.txt"]

    asyncio.run(session())
    assert list(stored(portal)) == ["fine.txt"]
    assert portal.store.partials() == []


def test_an_abandoned_out_of_order_sftp_upload_leaves_nothing(
    sftp_port: int, portal: Portal
) -> None:
    async def session() -> None:
        conn = await alice_ssh(sftp_port)
        sftp = await conn.start_sftp_client()
        handle = await sftp.open("/alpha/gap.bin", "wb")
        await handle.write(os.urandom(1_500_000), 0)
        await handle.write(os.urandom(1_000_000), 3_000_000)
        conn.abort()
        await asyncio.sleep(0.5)

    asyncio.run(session())
    with session_scope(portal.engine) as session:
        assert session.exec(select(DataFile)).all() == []
    assert portal.store.partials() == []


def test_a_passphrase_protected_openssh_key_logs_in(sshd: SshServer, tmp_path: Path) -> None:
    """ssh-keygen's default format with a passphrase, as an SFTP destination host's key."""
    key_file = tmp_path / "client_key"
    shutil.copy(sshd.private_key_file, key_file)
    key_file.chmod(0o600)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-P", "", "-N", "a passphrase", "-f", str(key_file)],
        check=True, capture_output=True,
    )  # fmt: skip
    text = key_file.read_text()
    assert text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    folder = sshd.folder("passphrase")
    for engine in ("asyncssh", "openssh"):
        with open_remote(
            "protected",
            sshd.url(folder),
            {"engine": engine},
            {"private_key": text, "passphrase": "a passphrase"},
        ) as remote:
            remote.upload(f"{engine}.txt", [b"signed in"])
        assert (folder / f"{engine}.txt").read_bytes() == b"signed in"


# --- FTP --------------------------------------------------------------------------------------


@needs_rclone
@pytest.mark.parametrize("tls", [False, True], ids=["ftp", "ftps"])
def test_rclone_copies_a_tree_up_over_ftp(
    ftp_port: int, portal: Portal, tmp_path: Path, tls: bool
) -> None:
    """rclone sets each file's time (MFMT) after its upload; over FTPS it speaks TLS 1.3."""
    source = tmp_path / "up"
    source.mkdir()
    files = make_tree(source)
    env = ftp_remote(ftp_port, tls)
    up = rclone("copy", str(source), "portal:/alpha/tree", env=env)
    assert up.returncode == 0, up.stderr
    assert stored(portal) == md5s(files, "tree/")
    listed = rclone("lsf", "-R", "--files-only", "portal:/alpha/tree", env=env)
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split()) == sorted(files)


@needs_rclone
def test_rclone_lists_a_missing_folder_as_not_found(ftp_port: int) -> None:
    listed = rclone("lsf", "portal:/alpha/missing", env=ftp_remote(ftp_port, False))
    assert listed.returncode != 0
    assert "not found" in listed.stderr.lower(), listed.stderr
    assert "EOF" not in listed.stderr


def test_ftp_refuses_missing_and_foreign_paths_with_550(ftp_port: int, portal: Portal) -> None:
    ftp = ftplib.FTP(timeout=30)
    ftp.connect("127.0.0.1", ftp_port)
    ftp.login("alice", ALICE_PASSWORD)
    ftp.voidcmd("TYPE I")  # SIZE is refused in ASCII mode whatever the path
    try:
        ftp.storbinary("STOR /alpha/here.txt", io.BytesIO(b"here"))
        for path in ("/alpha/missing", "/alpha/missing/deeper.txt", "/beta/x", "/beta"):
            for command in (
                lambda p: list(ftp.mlsd(p)),
                lambda p: (ftp.voidcmd("TYPE I"), ftp.sendcmd(f"SIZE {p}")),
                lambda p: ftp.sendcmd(f"MDTM {p}"),
                lambda p: ftp.sendcmd(f"RNFR {p}"),
            ):
                with pytest.raises(ftplib.error_perm) as refused:
                    command(path)
                assert str(refused.value).startswith("550"), refused.value
                assert ftp.pwd() == "/"  # the session is still there
        assert ftp.sendcmd("SIZE /alpha/here.txt") == "213 4"
    finally:
        ftp.quit()


def lftp(port: int, commands: str, *, tls: bool) -> subprocess.CompletedProcess[str]:
    assert LFTP is not None
    settings = (
        "set ftp:ssl-allow yes; set ftp:ssl-force yes; set ftp:ssl-protect-data yes;"
        " set ssl:verify-certificate no;"
        if tls
        else "set ftp:ssl-allow no;"
    )
    script = (
        f"{settings} set net:max-retries 1; set net:timeout 20;"
        f" open -u alice,{ALICE_PASSWORD} -p {port} 127.0.0.1; {commands}; bye"
    )
    return subprocess.run(
        [LFTP, "-c", script], capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOME": str(Path(os.environ.get("TMPDIR", "/tmp")))},
    )  # fmt: skip


@needs_lftp
@pytest.mark.parametrize("tls", [False, True], ids=["ftp", "ftps"])
def test_lftp_mirrors_a_tree_up(ftp_port: int, portal: Portal, tmp_path: Path, tls: bool) -> None:
    """mirror -R makes each folder (MKD), enters it (CWD) while it is still empty, then puts."""
    source = tmp_path / "up"
    source.mkdir()
    files = make_tree(source)
    (source / "empty").mkdir()
    result = lftp(ftp_port, f"mirror -R {source} /alpha/tree", tls=tls)
    assert result.returncode == 0, result.stderr
    assert stored(portal) == md5s(files, "tree/")
    listed = lftp(ftp_port, "cd /alpha/tree; cls -1", tls=tls)
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split()) == ["big.bin", "empty/", "note.txt", "sub/"]


@needs_lftp
def test_lftp_puts_a_file_over_ftps(ftp_port: int, portal: Portal, tmp_path: Path) -> None:
    source = tmp_path / "first.bin"
    source.write_bytes(os.urandom(1_200_000))
    result = lftp(ftp_port, f"put {source} -o /alpha/first.bin", tls=True)
    assert result.returncode == 0, result.stderr
    assert stored(portal) == {"first.bin": hashlib.md5(source.read_bytes()).hexdigest()}


def test_ftps_data_channels_speak_tls13_without_session_tickets(
    ftp_port: int, portal: Portal
) -> None:
    """A client that only uploads never reads its data channel: session tickets sent there
    stay unread, so its close is answered with a reset that loses the end of the upload
    (rclone and lftp saw 426 over TLS 1.3). The TLS is driven by hand to see every record."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    payload = os.urandom(300_000)
    ftp = ftplib.FTP_TLS(context=context, timeout=30)
    ftp.connect("127.0.0.1", ftp_port)
    ftp.login("alice", ALICE_PASSWORD)
    ftp.prot_p()
    ftp.voidcmd("TYPE I")
    try:
        with socket.create_connection(ftp.makepasv(), timeout=30) as raw:
            # 125 when the server saw the data connection before the command, else 150.
            assert ftp.sendcmd("STOR /alpha/ticketless.bin")[:3] in ("125", "150")
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = context.wrap_bio(incoming, outgoing)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    raw.sendall(outgoing.read())
                    incoming.write(raw.recv(65536))
            tls.write(payload)
            with pytest.raises(ssl.SSLWantReadError):
                tls.unwrap()  # sends close_notify, then waits for the server's
            raw.sendall(outgoing.read())
            while chunk := raw.recv(65536):  # all the server sends, up to its close
                incoming.write(chunk)
            tls.unwrap()
        assert ftp.voidresp().startswith("226")
    finally:
        ftp.quit()
    assert tls.version() == "TLSv1.3"
    assert not tls.session.has_ticket
    assert stored(portal) == {"ticketless.bin": hashlib.md5(payload).hexdigest()}


# --- folders across doors ---------------------------------------------------------------------


def test_a_folder_made_over_ftp_is_seen_over_sftp_until_removed(
    ftp_port: int, sftp_port: int, portal: Portal
) -> None:
    ftp = ftplib.FTP(timeout=30)
    ftp.connect("127.0.0.1", ftp_port)
    ftp.login("alice", ALICE_PASSWORD)
    try:
        ftp.mkd("/alpha/new")
        ftp.mkd("/alpha/new/inner")
        ftp.cwd("/alpha/new/inner")
        assert ftp.nlst() == []
        assert ftp.nlst("/alpha") == ["new"]
    finally:
        ftp.quit()

    async def session() -> None:
        async with alice_sftp(sftp_port) as sftp:
            assert await sftp.isdir("/alpha/new/inner")
            assert await sftp.listdir("/alpha/new") == [".", "..", "inner"]
            await sftp.rmdir("/alpha/new/inner")
            assert await sftp.listdir("/alpha") == [".", "..", "new"]
            await sftp.rmdir("/alpha/new")
            assert await sftp.listdir("/alpha") == [".", ".."]
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.rmdir("/alpha/new")

    asyncio.run(session())
