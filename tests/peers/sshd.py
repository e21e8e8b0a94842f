"""A real OpenSSH server on a free local port, for SFTP tests.

Key login works for the user running the tests; when that is root, a dedicated
system user `ecpdstest` (created once) also logs in with a password.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ecpds.core.devserver import free_port, wait_for_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PASSWORD_USER = "ecpdstest"
PASSWORD = "ecpds-Test-pw-1"


@dataclass
class SshServer:
    host: str
    port: int
    root: Path  # a folder every test user may write to
    key_user: str
    private_key: str  # OpenSSH private key text of key_user
    private_key_file: Path
    host_key: str  # "SHA256:..." fingerprint of the server's host key
    password_user: str | None  # None when the tests do not run as root
    password: str

    def url(self, path: Path | str, *, user: str | None = None) -> str:
        """`sftp://user@127.0.0.1:port/path` (the key user unless another is named)."""
        return f"sftp://{user or self.key_user}@{self.host}:{self.port}{Path(path).as_posix()}"

    def folder(self, name: str) -> Path:
        """A fresh folder under root that the password user owns too."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        if self.password_user:
            shutil.chown(path, self.password_user, self.password_user)
        return path


def _run(*args: str, stdin: str | None = None) -> None:
    subprocess.run(args, input=stdin, text=True, check=True, capture_output=True)


def make_password_user() -> str | None:
    """The password-login user, created once when we are root; None otherwise."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        return None
    exists = subprocess.run(["id", PASSWORD_USER], capture_output=True).returncode == 0
    if not exists:
        _run("useradd", "--system", "--create-home", "--shell", "/bin/sh", PASSWORD_USER)
    _run("chpasswd", stdin=f"{PASSWORD_USER}:{PASSWORD}\n")
    return PASSWORD_USER


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """OpenSSH with SFTP on 127.0.0.1:<free port>, its own host key and a client key."""
    if not os.path.exists(SSHD) or not shutil.which("ssh-keygen"):
        pytest.skip("OpenSSH server not installed (run tests/peers/install.sh)")
    base = tmp_path_factory.mktemp("sshd")
    base.chmod(0o755)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_key, client_key = base / "host_ed25519", base / "client_ed25519"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key))
    authorized = base / "authorized_keys"
    shutil.copy(f"{client_key}.pub", authorized)
    authorized.chmod(0o644)
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{host_key}.pub"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    password_user = make_password_user()
    # pytest's own tmp folders are private to us; the password user needs a way in.
    root = Path(tempfile.mkdtemp(prefix="ecpds-sftp-"))
    root.chmod(0o755)
    port = free_port()
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {base / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "StrictModes no",
                "UsePAM no",
                f"PasswordAuthentication {'yes' if password_user else 'no'}",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "Subsystem sftp internal-sftp",
                "MaxStartups 100",
                "MaxSessions 100",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    log = (base / "sshd.log").open("wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    try:
        wait_for_port("127.0.0.1", port, timeout=20, proc=proc)
        yield SshServer(
            host="127.0.0.1",
            port=port,
            root=root,
            key_user=getpass.getuser(),
            private_key=client_key.read_text(),
            private_key_file=client_key,
            host_key=fingerprint,
            password_user=password_user,
            password=PASSWORD,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
