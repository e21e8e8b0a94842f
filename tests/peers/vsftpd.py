"""vsftpd with explicit TLS, as sites run it: TLS required, and (its default) the data
channel must resume the control channel's TLS session. Needs root and a local user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecpds.core.devserver import free_port, wait_for_port
from peers.ftp import FtpServer
from peers.sshd import PASSWORD, make_password_user
from peers.tls import self_signed

VSFTPD = shutil.which("vsftpd") or "/usr/sbin/vsftpd"


@pytest.fixture(scope="session")
def vsftpd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    if not os.path.exists(VSFTPD):
        pytest.skip("vsftpd is not installed (run tests/peers/install.sh)")
    user = make_password_user()
    if user is None:
        pytest.skip("vsftpd logs in local users: the tests must run as root to make one")
    base = tmp_path_factory.mktemp("vsftpd")
    cert, key = self_signed(base)
    # The user's chroot: outside pytest's private folders, which the user could not enter.
    root = Path(tempfile.mkdtemp(prefix="ecpds-vsftpd-"))
    root.chmod(0o755)
    shutil.chown(root, user, user)
    (base / "empty").mkdir()
    port, passive = free_port(), free_port()
    config = base / "vsftpd.conf"
    config.write_text(
        "\n".join(
            [
                "listen=YES",
                "listen_address=127.0.0.1",
                f"listen_port={port}",
                "background=NO",
                "anonymous_enable=NO",
                "local_enable=YES",
                "write_enable=YES",
                "local_umask=022",
                f"local_root={root}",
                "chroot_local_user=YES",
                "allow_writeable_chroot=YES",
                f"secure_chroot_dir={base / 'empty'}",
                "pam_service_name=vsftpd",
                "seccomp_sandbox=NO",
                "pasv_enable=YES",
                f"pasv_min_port={passive}",
                f"pasv_max_port={passive + 20}",
                "ssl_enable=YES",
                f"rsa_cert_file={cert}",
                f"rsa_private_key_file={key}",
                "force_local_logins_ssl=YES",
                "force_local_data_ssl=YES",
                "require_ssl_reuse=YES",
                "ssl_sslv2=NO",
                "ssl_sslv3=NO",
                "ssl_tlsv1=NO",
                f"vsftpd_log_file={base / 'vsftpd.log'}",
                "",
            ]
        )
    )
    log = (base / "out.log").open("wb")
    proc = subprocess.Popen([VSFTPD, str(config)], stdout=log, stderr=log)
    try:
        wait_for_port("127.0.0.1", port, timeout=20, proc=proc)
        yield FtpServer("ftps", "127.0.0.1", port, root, user, PASSWORD, str(cert))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
