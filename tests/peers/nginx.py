"""nginx serving a folder with its autoindex pages, over HTTP and HTTPS, on free local ports:
the index pages an acquisition host lists (tests/peers/install.sh installs nginx)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ecpds.core.devserver import free_port, wait_for_port
from peers.process import stop
from peers.tls import self_signed

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class NginxServer:
    root: Path
    port: int  # plain HTTP
    tls_port: int
    ca_file: str

    def url(self, folder: str, *, tls: bool = False, json: bool = False) -> str:
        """The folder's URL; with `json`, where nginx indexes it as JSON."""
        if json:
            folder = f"json/{folder}"
        if tls:
            return f"https://127.0.0.1:{self.tls_port}/{folder}"
        return f"http://127.0.0.1:{self.port}/{folder}"


@pytest.fixture(scope="session")
def nginx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed (run tests/peers/install.sh)")
    base = tmp_path_factory.mktemp("nginx")
    cert, key = self_signed(base)
    # Outside pytest's private folders, which nginx's workers could not enter.
    root = Path(tempfile.mkdtemp(prefix="ecpds-nginx-"))
    root.chmod(0o755)
    port, tls_port = free_port(), free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    location = (
        "location / { autoindex on; autoindex_exact_size on; }"
        f" location /json/ {{ alias {root}/; autoindex on; autoindex_format json; }}"
    )
    (base / "nginx.conf").write_text(
        f"""{user}
daemon off;
worker_processes 1;
pid {base / "nginx.pid"};
error_log {base / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {base / "body"};
    proxy_temp_path {base / "proxy"};
    fastcgi_temp_path {base / "fastcgi"};
    uwsgi_temp_path {base / "uwsgi"};
    scgi_temp_path {base / "scgi"};
    types {{ application/octet-stream bin; }}
    server {{ listen 127.0.0.1:{port}; root {root}; {location} }}
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {root};
        {location}
    }}
}}
"""
    )
    log = (base / "out.log").open("wb")
    proc = subprocess.Popen(
        [NGINX, "-p", str(base), "-c", str(base / "nginx.conf")], stdout=log, stderr=log
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=20, proc=proc)
        wait_for_port("127.0.0.1", tls_port, timeout=20, proc=proc)
        yield NginxServer(root, port, tls_port, str(cert))
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
