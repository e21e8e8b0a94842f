"""The OpenSSH engine of SFTP against a real sshd: secrets, pooling, and its absence."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
from peers.sshd import SshServer

from ecpds.core.protocols import openssh
from ecpds.core.protocols.pool import REMOTES
from ecpds.core.store import Store
from ecpds.core.transmit import SendRequest, send

pytestmark = pytest.mark.skipif(
    openssh.client() is None, reason="no OpenSSH client 8.5 or newer on PATH"
)


def _request(store: Store, url: str, target: str, data: bytes, **options) -> SendRequest:
    object_id = os.urandom(8).hex()
    stored = store.write(object_id, [data])
    return SendRequest(
        object_id,
        len(data),
        stored.adler32,
        "h1",
        url,
        {"engine": "openssh", **options},
        target,
        stored.md5,
    )


def _leftovers() -> list[str]:
    return glob.glob("/dev/shm/ecpds-ssh-*") + glob.glob("/tmp/ecpds-ssh-*")


def test_secrets_never_reach_a_command_line_or_stay_on_disk(store: Store, sshd: SshServer) -> None:
    before = _leftovers()
    folder = sshd.folder("secrets")
    logins = [(sshd.url(folder), {"private_key": sshd.private_key})]
    if sshd.password_user:
        logins.append((sshd.url(folder, user=sshd.password_user), {"password": sshd.password}))
    for n, (url, credentials) in enumerate(logins):
        request = _request(store, url, f"s{n}.bin", b"secret-free" * 100)
        with REMOTES.remote("h1", url, request.host_options, credentials) as remote:
            command = Path(f"/proc/{remote.channel.process.pid}/cmdline").read_bytes()
            environment = Path(f"/proc/{remote.channel.process.pid}/environ").read_bytes()
            for secret in credentials.values():
                assert secret.encode() not in command and secret.encode() not in environment
            assert _leftovers() == before  # the key and password files went after the login
        send(store, request, credentials, progress=lambda n: None)
        assert (folder / f"s{n}.bin").read_bytes() == b"secret-free" * 100


def test_a_dead_pooled_connection_is_replaced(store: Store, sshd: SshServer) -> None:
    folder = sshd.folder("pooled")
    url, credentials = sshd.url(folder), {"private_key": sshd.private_key}
    request = _request(store, url, "one.bin", b"1" * 1000, timeout=17)
    send(store, request, credentials, progress=lambda n: None)
    with REMOTES.remote("h1", url, request.host_options, credentials) as first:
        process = first.channel.process
    with REMOTES.remote("h1", url, request.host_options, credentials) as second:
        assert second is first  # one ssh process served both
    process.kill()
    process.wait()
    send(store, _request(store, url, "two.bin", b"2" * 1000, timeout=17), credentials,
         progress=lambda n: None)  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == ["one.bin", "two.bin"]


def test_without_an_openssh_client(tmp_path: Path, sshd: SshServer) -> None:
    """`engine = "openssh"` says what is missing; `auto` falls back to asyncssh and works."""
    folder = sshd.folder("no-client")
    script = tmp_path / "send.py"
    script.write_text(
        "import sys\n"
        "from ecpds.core.protocols import ProtocolError, open_remote\n"
        "url, key, engine = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]\n"
        "try:\n"
        "    with open_remote('h1', url, {'engine': engine}, {'private_key': key}) as remote:\n"
        "        remote.upload('x.bin', [b'fallback'])\n"
        "        print(type(remote).__name__)\n"
        "except ProtocolError as exc:\n"
        "    print(exc)\n"
    )
    key = tmp_path / "key"
    key.write_text(sshd.private_key)
    no_ssh = {**os.environ, "PATH": str(tmp_path)}  # python runs by full path; no ssh here
    outputs = [
        subprocess.run(
            [sys.executable, str(script), sshd.url(folder), str(key), engine],
            env=no_ssh,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        for engine in ("openssh", "auto")
    ]
    assert "engine 'openssh' needs the OpenSSH client" in outputs[0]
    assert "sftp host h1" in outputs[0] and "\n" not in outputs[0]
    assert outputs[1] == "SftpRemote"
    assert (folder / "x.bin").read_bytes() == b"fallback"
