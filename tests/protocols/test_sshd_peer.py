"""The sshd peer accepts key and password logins and serves SFTP."""

from __future__ import annotations

import asyncssh
import pytest
from peers.sshd import SshServer


async def test_key_and_password_logins(sshd: SshServer) -> None:
    key = asyncssh.import_private_key(sshd.private_key)
    async with asyncssh.connect(
        sshd.host, sshd.port, username=sshd.key_user, client_keys=[key], known_hosts=None
    ) as conn:
        result = await conn.run("echo ok", check=True)
        assert str(result.stdout).strip() == "ok"
    if sshd.password_user is None:
        pytest.skip("password login needs the tests to run as root (to create the user)")
    folder = sshd.folder("password-login")
    async with (
        asyncssh.connect(
            sshd.host,
            sshd.port,
            username=sshd.password_user,
            password=sshd.password,
            known_hosts=None,
            client_keys=None,
        ) as conn,
        conn.start_sftp_client() as sftp,
        sftp.open(f"{folder}/hello.txt", "wb") as f,
    ):
        await f.write(b"hello")
    assert (folder / "hello.txt").read_bytes() == b"hello"
