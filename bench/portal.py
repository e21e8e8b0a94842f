"""Data portal benchmark: downloads of one big file through each front-end, beside peers.

The portal runs as its own process (as `ecpds portal` does). HTTPS is measured with
curl beside nginx (TLS) serving the same file; SFTP with OpenSSH's `sftp` client
beside OpenSSH's sshd + sftp-server; S3 with curl on a presigned URL; FTP with curl.
`--json` prints one object for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import boto3
from botocore.config import Config

from ecpds.core import catalog
from ecpds.core.access import create_access_key
from ecpds.core.db import open_catalog, session_scope
from ecpds.core.devserver import free_port, wait_for_port
from ecpds.core.ingest import ingest
from ecpds.core.models import DataUserCreate, DestinationCreate
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.store import open_store
from ecpds.portal.tls import ensure_certificate

MiB = 1 << 20
PASSWORD = "bench-password-1"
SSH = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-q"]


class BenchError(Exception):
    pass


def _run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=True, **kwargs)  # type: ignore[call-overload]


def _curl_rate(*args: str) -> float:
    """MB/s (10^6 bytes per second) of one curl download to /dev/null."""
    out = _run("curl", "-sSfk", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", *args)
    size, seconds = out.stdout.split()
    return int(size) / float(seconds) / 1e6


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children that have ended (sshd's sessions)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _timed(size: int, *args: str) -> float:
    start = time.perf_counter()
    _run(*args)
    return size / (time.perf_counter() - start) / 1e6


async def _zeros(size: int) -> AsyncIterator[bytes]:
    block = os.urandom(4 * MiB)
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sent += len(piece)
        yield piece


def prepare(settings: Settings, size: int, public_key: str) -> tuple[str, str, Path]:
    """A bucket destination `bench` with one file, a user, an S3 key; the file's store path."""
    engine = open_catalog(settings.catalog_url)
    store = open_store(settings)
    box = CredentialBox(load_or_create_key(settings.key_file))
    with session_scope(engine) as session:
        catalog.create_destination(session, data=DestinationCreate(name="bench"))
        user = catalog.create_user(
            session,
            data=DataUserCreate(
                name="bench", password=PASSWORD, destinations=["bench"], ssh_keys=[public_key]
            ),
        )
        key_id, secret = create_access_key(session, box, user)
    result = asyncio.run(
        ingest(engine=engine, store=store, destination="bench", name="big.bin", chunks=_zeros(size))
    )
    path = Path(store.primary.key(result.data_file.id))
    engine.dispose()
    return key_id, secret, path


@contextlib.contextmanager
def portal_process(settings: Settings, env: dict[str, str], log: Path) -> Iterator[int]:
    code = "from ecpds.core.settings import Settings; from ecpds.portal import server;" + (
        "server.run(Settings())"
    )
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=out)
        try:
            for port in (
                settings.https_port,
                settings.s3_port,
                settings.ftp_port,
                settings.sftp_port,
            ):
                wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def nginx(folder: Path, file: Path, cert: Path, key: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    (folder / "www").mkdir(parents=True)
    os.link(file, folder / "www" / "big.bin")
    conf = folder / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
master_process off;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
{"user root;" if os.geteuid() == 0 else ""}
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {folder}/www;
    }}
}}
"""
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(folder)])
    try:
        wait_for_port("127.0.0.1", port, timeout=20, proc=proc)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def openssh(folder: Path, client_key: Path) -> Iterator[tuple[int, int]]:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    server = Path("/usr/lib/openssh/sftp-server")
    if not Path(sshd).exists() or not server.exists():
        raise BenchError("OpenSSH sshd / sftp-server are not installed")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    folder.mkdir(parents=True)
    host_key = folder / "host_key"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
    shutil.copy(f"{client_key}.pub", folder / "authorized_keys")
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {folder}/sshd.pid\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\nStrictModes no\nUsePAM no\n"
        f"PasswordAuthentication no\nPermitRootLogin prohibit-password\n"
        f"Subsystem sftp {server}\nLogLevel ERROR\n"
    )
    log = (folder / "sshd.log").open("wb")
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    try:
        wait_for_port("127.0.0.1", port, timeout=20, proc=proc)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def sftp_get(port: int, user: str, key: Path, remote: str, size: int) -> float:
    """MB/s of one `sftp` get into /dev/null (no local disk in the way)."""
    batch = key.parent / f"sftp-batch-{port}"
    batch.write_text(f"get {remote} /dev/null\n")
    address = f"{user}@127.0.0.1"
    return _timed(size, "sftp", *SSH, "-i", str(key), "-P", str(port), "-b", str(batch), address)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1 GiB)")
    parser.add_argument("--runs", type=int, default=3, help="best of N rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    for tool in ("curl", "nginx", "sftp", "ssh-keygen"):
        if shutil.which(tool) is None:
            print(
                f"bench/portal.py: {tool} is not installed (tests/peers/install.sh)",
                file=sys.stderr,
            )
            return 2
    size = args.size_mib * MiB
    base = Path(tempfile.mkdtemp(prefix="ecpds-bench-portal-", dir=os.environ.get("TMPDIR")))
    base.chmod(0o755)
    try:
        ports = {
            name: free_port() for name in ("https", "s3", "ftp", "sftp", "mqtt", "mqtts", "mqtt_ws")
        }
        env = dict(
            os.environ,
            ECPDS_HOME=str(base / "var"),
            ECPDS_HTTPS_PORT=str(ports["https"]),
            ECPDS_S3_PORT=str(ports["s3"]),
            ECPDS_FTP_PORT=str(ports["ftp"]),
            ECPDS_SFTP_PORT=str(ports["sftp"]),
            ECPDS_MQTT_PORT=str(ports["mqtt"]),
            ECPDS_MQTTS_PORT=str(ports["mqtts"]),
            ECPDS_MQTT_WS_PORT=str(ports["mqtt_ws"]),
            ECPDS_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        )
        env.pop("ECPDS_CONFIG", None)
        settings = Settings(
            home=base / "var",
            https_port=ports["https"],
            s3_port=ports["s3"],
            ftp_port=ports["ftp"],
            sftp_port=ports["sftp"],
            mqtt_port=ports["mqtt"],
            mqtts_port=ports["mqtts"],
            mqtt_ws_port=ports["mqtt_ws"],
        )
        client_key = base / "client_key"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key))
        key_id, secret, stored = prepare(settings, size, (base / "client_key.pub").read_text())
        cert, key = ensure_certificate(settings)
        results: dict[str, float | int | str] = {"size_mib": args.size_mib}
        user = os.environ.get("USER") or "root"
        with (
            portal_process(settings, env, base / "portal.log") as portal_pid,
            nginx(base / "nginx", stored, cert, key) as (nginx_port, nginx_pid),
            openssh(base / "sshd", client_key) as (sshd_port, sshd_pid),
        ):
            s3 = boto3.client(
                "s3",
                endpoint_url=f"https://127.0.0.1:{ports['s3']}",
                aws_access_key_id=key_id,
                aws_secret_access_key=secret,
                region_name="us-east-1",
                verify=False,
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            )
            url = s3.generate_presigned_url(
                "get_object", Params={"Bucket": "bench", "Key": "big.bin"}, ExpiresIn=3600
            )
            https = f"https://127.0.0.1:{ports['https']}/data/bench/big.bin"
            ftp = f"ftp://bench:{PASSWORD}@127.0.0.1:{ports['ftp']}/bench/big.bin"
            measures: dict[str, Callable[[], float]] = {
                "https_mb_s": lambda: _curl_rate("-u", f"bench:{PASSWORD}", https),
                "nginx_mb_s": lambda: _curl_rate(f"https://127.0.0.1:{nginx_port}/big.bin"),
                "sftp_mb_s": lambda: sftp_get(
                    ports["sftp"], "bench", client_key, "/bench/big.bin", size
                ),
                "openssh_sftp_mb_s": lambda: sftp_get(
                    sshd_port, user, client_key, str(stored), size
                ),
                "s3_mb_s": lambda: _curl_rate(url),
                "ftp_mb_s": lambda: _curl_rate(ftp),
            }
            servers = {"https": portal_pid, "nginx": nginx_pid, "sftp": portal_pid}
            servers["openssh_sftp"] = sshd_pid
            # Rounds interleave the front-ends and their peers, so a busy moment on the
            # machine does not fall on one side only; the best round counts. Server CPU
            # seconds per GiB do not depend on what else the machine is doing.
            for _ in range(args.runs):
                for name, measure in measures.items():
                    server = servers.get(name.removesuffix("_mb_s"))
                    before = cpu_seconds(server) if server else 0.0
                    results[name] = max(float(results.get(name, 0)), measure())
                    if server:
                        time.sleep(0.3)  # let sshd reap the session it forked
                        used = (cpu_seconds(server) - before) * (1 << 30) / size
                        cpu_key = name.replace("_mb_s", "_cpu_s_per_gib")
                        results[cpu_key] = round(min(float(results.get(cpu_key, used)), used), 2)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for key_name in (
        "https_mb_s",
        "nginx_mb_s",
        "sftp_mb_s",
        "openssh_sftp_mb_s",
        "s3_mb_s",
        "ftp_mb_s",
    ):
        results[key_name] = round(float(results[key_name]), 1)
    results["https_vs_nginx"] = round(
        float(results["https_mb_s"]) / float(results["nginx_mb_s"]), 2
    )
    results["sftp_vs_openssh"] = round(
        float(results["sftp_mb_s"]) / float(results["openssh_sftp_mb_s"]), 2
    )
    # Downloads only (the bench makes no upload): the portal's server CPU per GiB over
    # nginx's, both taken around the same transfer in the same rounds.
    results["https_cpu_vs_nginx"] = round(
        float(results["https_cpu_s_per_gib"]) / float(results["nginx_cpu_s_per_gib"]), 2
    )
    if args.json:
        print(json.dumps(results))
    else:
        print(f"data portal, one {args.size_mib} MiB download, best of {args.runs} (MB/s)")
        print(
            f"  HTTPS  {results['https_mb_s']:>8}   nginx TLS      {results['nginx_mb_s']:>8}"
            f"   ratio {results['https_vs_nginx']}   CPU ratio {results['https_cpu_vs_nginx']}"
        )
        print(
            f"  SFTP   {results['sftp_mb_s']:>8}   OpenSSH sftp   {results['openssh_sftp_mb_s']:>8}"
            f"   ratio {results['sftp_vs_openssh']}"
        )
        cpu = {k: v for k, v in results.items() if k.endswith("_cpu_s_per_gib")}
        print(f"  server CPU seconds per GiB: {cpu}")
        print(f"  S3     {results['s3_mb_s']:>8}")
        print(f"  FTP    {results['ftp_mb_s']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
