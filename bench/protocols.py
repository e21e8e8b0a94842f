"""Protocol benchmark: ecpds `send` beside `rclone copy`, same local servers, same run.

Per protocol: one big file (1 GiB) and many small ones (1,000 x 64 KiB). ecpds sends
from its store in a child process (as a worker would) whose peak RSS, with its ssh
children, is recorded; rclone copies the same bytes from a local folder. The two take
turns, `--repeat` times each, and each one's best run counts. `--json` prints one object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import getpass
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PROTOCOLS = ["ftp", "ftps", "sftp", "http", "s3", "azure", "gcs"]
MiB = 1 << 20
GiB = 1 << 30
PARALLEL = 4  # small files in flight, for ecpds as for rclone's default --transfers


@dataclass
class Server:
    """One running server: where ecpds and rclone send, and how."""

    url: Callable[[str], str]  # ecpds host URL of a folder
    options: dict[str, Any]
    credentials: dict[str, str]
    rclone_env: dict[str, str] | None = None  # RCLONE_CONFIG_DST_* settings; None: unreachable
    rclone_path: Callable[[str], str] = lambda folder: f"dst:{folder}"
    note: str = ""
    # More ecpds settings measured beside the main ones (big file MB/s as `p_NAME_mb_s`).
    also: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Folders:
    """Stands in for pytest's tmp_path_factory when a peer fixture runs outside pytest."""

    base: Path
    repeat: int = 1  # repetitions of the run: each writes under names of its own
    made: list[Path] = field(default_factory=list)

    def mktemp(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.base))
        self.made.append(path)
        return path


def _obscure(secret: str) -> str:
    return subprocess.run(
        ["rclone", "obscure", secret], capture_output=True, text=True, check=True
    ).stdout.strip()


# --- servers ------------------------------------------------------------------------------


@contextlib.contextmanager
def ftp_server(folders: Folders, scheme: str) -> Iterator[Server]:
    from peers.ftp import _serve

    with contextlib.contextmanager(_serve)(folders.mktemp(scheme), scheme) as ftp:
        # rclone's FTP client cannot create a missing top folder on pyftpdlib
        for rep in range(folders.repeat):
            (ftp.root / f"rclone-small-{rep}").mkdir()
        (ftp.root / "rclone-big").mkdir()
        env = {
            "TYPE": "ftp",
            "HOST": ftp.host,
            "PORT": str(ftp.port),
            "USER": ftp.user,
            "PASS": _obscure(ftp.password),
        }
        options: dict[str, Any] = {"ca_file": ftp.ca_file} if ftp.ca_file else {}
        also = {}
        if scheme == "ftps":
            # Over TLS 1.3 rclone 1.60 loses the tail of a file sent to pyftpdlib, so it runs
            # on TLS 1.2; ecpds runs on its default, TLS 1.3, and on TLS 1.2 beside.
            env |= {"EXPLICIT_TLS": "true", "NO_CHECK_CERTIFICATE": "true", "DISABLE_TLS13": "true"}
            also = {"tls12": {**options, "tls13": False}}
        yield Server(
            url=ftp.url,
            options=options,
            credentials={"password": ftp.password},
            rclone_env=env,
            also=also,
        )


@contextlib.contextmanager
def sftp_server(folders: Folders) -> Iterator[Server]:
    from peers.sshd import sshd

    with contextlib.contextmanager(sshd.__wrapped__)(folders) as ssh:
        root = ssh.folder("bench")
        yield Server(
            url=lambda name: ssh.url(root / name),
            options={"host_key": ssh.host_key},
            credentials={"private_key": ssh.private_key},
            rclone_env={
                "TYPE": "sftp",
                "HOST": ssh.host,
                "PORT": str(ssh.port),
                "USER": ssh.key_user,
                "KEY_FILE": str(ssh.private_key_file),
            },
            rclone_path=lambda name: f"dst:{root / name}",
        )


DAV_EXT = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so"  # Debian: libnginx-mod-http-dav-ext


@contextlib.contextmanager
def nginx_webdav(folders: Folders) -> Iterator[Server]:
    """nginx as a WebDAV server: in C, so that the clients, not the server, set the pace."""
    from ecpds.core.devserver import free_port, wait_for_port

    base = folders.mktemp("nginx")
    root, scratch = base / "root", base / "body"
    for folder in (root, scratch):
        folder.mkdir()
    port = free_port()
    # Workers as the benchmark's own user, who owns the folders (ignored unless root).
    user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
    (base / "nginx.conf").write_text(
        f"""load_module {DAV_EXT};
{user}
worker_processes 1;
daemon off;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {scratch};
  client_max_body_size 0;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{
      dav_methods PUT DELETE MKCOL COPY MOVE;
      dav_ext_methods PROPFIND OPTIONS;
      create_full_put_path on;
      dav_access user:rw group:rw all:r;
    }}
  }}
}}
"""
    )
    log = (base / "out.log").open("wb")
    proc = subprocess.Popen(["nginx", "-c", str(base / "nginx.conf"), "-p", str(base)],
                            stdout=log, stderr=log)  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, timeout=20, proc=proc)
        yield Server(
            url=lambda name: f"http://127.0.0.1:{port}/{name}",
            options={"method": "webdav"},
            credentials={},
            rclone_env={"TYPE": "webdav", "URL": f"http://127.0.0.1:{port}/", "VENDOR": "other"},
            note="WebDAV (nginx)",
        )
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@contextlib.contextmanager
def http_server(folders: Folders) -> Iterator[Server]:
    if shutil.which("nginx") and os.path.exists(DAV_EXT):
        with nginx_webdav(folders) as server:
            yield server
        return
    from peers.httpd import _serve

    with contextlib.contextmanager(_serve)(folders.mktemp("webdav"), "webdav", False) as web:
        yield Server(
            url=web.url,
            options={"method": "webdav"},
            credentials=web.credentials,
            rclone_env={
                "TYPE": "webdav",
                "URL": f"http://127.0.0.1:{web.port}/",
                "VENDOR": "other",
                "USER": web.user or "",
                "PASS": _obscure(web.secret),
            },
            note="WebDAV (wsgidav)",
        )


@contextlib.contextmanager
def s3_server(folders: Folders) -> Iterator[Server]:
    from peers.s3 import serve

    with serve(folders.mktemp("moto")) as s3:
        bucket = s3.bucket()
        yield Server(
            url=lambda name: f"s3://{bucket}/{name}",
            options=s3.options(),
            credentials=s3.credentials,
            rclone_env={
                "TYPE": "s3",
                "PROVIDER": "Other",
                "ACCESS_KEY_ID": s3.access_key_id,
                "SECRET_ACCESS_KEY": s3.secret_access_key,
                "ENDPOINT": s3.endpoint,
                "REGION": s3.region,
                "FORCE_PATH_STYLE": "true",
                # rclone's check after a multipart upload (HEAD ?versionId=null) gets a 400
                # from moto; without it rclone does a little less work than ecpds
                "NO_HEAD": "true",
            },
            rclone_path=lambda name: f"dst:{bucket}/{name}",
            note="moto_server",
        )


@contextlib.contextmanager
def azure_server(folders: Folders) -> Iterator[Server]:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas
    from peers.azure import serve

    with serve(folders.mktemp("azurite")) as azure:
        container = azure.container()
        # rclone 1.60 builds https://ACCOUNT.ENDPOINT from an account; a container SAS URL
        # is how it reaches an emulator on another port.
        sas = generate_container_sas(
            azure.account,
            container,
            account_key=azure.account_key,
            permission=ContainerSasPermissions(read=True, write=True, create=True, list=True),
            expiry=datetime.now(UTC) + timedelta(hours=12),
        )
        yield Server(
            url=lambda name: f"azure://{container}/{name}",
            options=azure.options(),
            credentials=azure.credentials,
            rclone_env={"TYPE": "azureblob", "SAS_URL": f"{azure.endpoint}/{container}?{sas}"},
            rclone_path=lambda name: f"dst:{container}/{name}",
            note="Azurite",
        )


@contextlib.contextmanager
def gcs_server(folders: Folders) -> Iterator[Server]:
    from peers.gcs import serve

    with serve(folders.mktemp("gcs")) as gcs:
        bucket = gcs.bucket()
        yield Server(
            url=lambda name: f"gcs://{bucket}/{name}",
            options=gcs.options(),
            credentials={},
            rclone_env={
                "TYPE": "google cloud storage",
                "ANONYMOUS": "true",
                "ENDPOINT": f"{gcs.endpoint}/storage/v1/",
            },
            rclone_path=lambda name: f"dst:{bucket}/{name}",
            note="gcp-storage-emulator",
        )


SERVERS: dict[str, Callable[[Folders], contextlib.AbstractContextManager[Server]]] = {
    "ftp": lambda f: ftp_server(f, "ftp"),
    "ftps": lambda f: ftp_server(f, "ftps"),
    "sftp": sftp_server,
    "http": http_server,
    "s3": s3_server,
    "azure": azure_server,
    "gcs": gcs_server,
}


# --- the data -----------------------------------------------------------------------------


@dataclass
class Data:
    source: Path  # big.bin and small/ for rclone
    store: Path  # the same bytes in an ecpds store
    big_size: int
    small: list[tuple[str, str, str]]  # (object id, adler32, md5), as the catalog has them
    big: tuple[str, str, str]


def make_data(base: Path, big_size: int, small_count: int, small_size: int) -> Data:
    from ecpds.core.store import Store

    store_dir, source = base / "store", base / "source"
    (source / "small").mkdir(parents=True)
    store = Store([str(store_dir)])
    block = os.urandom(16 * MiB)

    def big_chunks() -> Iterator[bytes]:
        left = big_size
        while left:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            yield piece

    with (source / "big.bin").open("wb") as out:
        for chunk in big_chunks():
            out.write(chunk)
    stored = store.write("big", big_chunks())
    big = ("big", stored.adler32, stored.md5)
    small = []
    for n in range(small_count):
        data = os.urandom(small_size)
        (source / "small" / f"f{n:05d}.bin").write_bytes(data)
        stored = store.write(f"s{n:05d}", [data])
        small.append((f"s{n:05d}", stored.adler32, stored.md5))
    return Data(source, store_dir, big_size, small, big)


# --- the ecpds side (child process) -------------------------------------------------------


def _tree_pids() -> list[str]:
    """This process and its children (the ssh clients of the OpenSSH engine)."""
    pids = [str(os.getpid())]
    children = Path(f"/proc/self/task/{os.getpid()}/children")
    if children.exists():
        pids += children.read_text().split()
    return pids


def tree_rss_mib(children: bool = True) -> float:
    """RSS of this process plus (by default) its children."""
    total = 0
    for pid in _tree_pids() if children else [str(os.getpid())]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def tree_cpu_s() -> float:
    """User+system CPU seconds of this process and its children, live or reaped.

    A child alive at one reading and reaped at the next is counted by /proc at the first
    and by RUSAGE_CHILDREN (its whole life) at the second: the difference is right.
    """
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in _tree_pids()[1:]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def child(job_file: str) -> None:
    """Per leg (a host): the big file, then the small ones; seconds, CPU and peak RSS.

    One leg is the per-protocol run; several are one worker that sends to every
    protocol in turn, as a deployed worker with all of them loaded does.
    """
    from ecpds.core.protocols import open_remote
    from ecpds.core.store import Store
    from ecpds.core.transmit import SendRequest, send

    job = json.loads(Path(job_file).read_text())
    Path(job_file).unlink()
    store = Store([job["store"]])
    peak = [0.0]
    phase = ["start"]  # what is being sent: the peak RSS of each phase is kept apart
    phase_peaks: dict[str, float] = {}
    sending = threading.Event()

    def sample() -> None:
        while not sending.wait(0.05):
            rss = tree_rss_mib()
            peak[0] = max(peak[0], rss)
            phase_peaks[phase[0]] = max(phase_peaks.get(phase[0], 0.0), rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def one(host: dict, oid: str, size: int, adler32: str, md5: str, url: str, target: str) -> None:
        request = SendRequest(
            data_file_id=oid,
            size=size,
            adler32=adler32,
            host_name="bench",
            host_url=url,
            host_options=host["options"],
            target=target,
            md5=md5,
        )
        send(store, request, host["credentials"], progress=lambda n: None)

    legs = []
    for host in job["legs"]:
        # A running worker has its protocol modules imported and its clients built: one
        # small send first, so the timings below are of transfers, not of a process starting.
        warm_id, warm_adler, warm_md5 = job["small"][0]
        phase[0] = f"{len(legs)}-warm"
        one(host, warm_id, job["small_size"], warm_adler, warm_md5, host["big_url"], "warm-up.bin")
        phase[0] = f"{len(legs)}-big"
        cpu, started = tree_cpu_s(), time.perf_counter()
        big_id, big_adler, big_md5 = job["big"]
        one(host, big_id, job["big_size"], big_adler, big_md5, host["big_url"], host["big_name"])
        big_seconds, big_cpu = time.perf_counter() - started, tree_cpu_s() - cpu
        phase[0] = f"{len(legs)}-small"
        cpu, started = tree_cpu_s(), time.perf_counter()
        size, url = job["small_size"], host["small_url"]
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            futures = [
                pool.submit(one, host, oid, size, adler, md5, url, f"{oid}.bin")
                for oid, adler, md5 in host["small"]
            ]
            for future in futures:
                future.result()
        small_seconds, small_cpu = time.perf_counter() - started, tree_cpu_s() - cpu
        if host.get("delete_big"):  # the servers' memory stays flat across the legs
            with open_remote("bench", host["big_url"], host["options"], host["credentials"]) as r:
                r.delete(host["big_name"])
        legs.append(
            {
                "big": big_seconds,
                "small": small_seconds,
                "big_cpu": big_cpu,
                "small_cpu": small_cpu,
                "rss_after": tree_rss_mib(),
                "children_rss_after": tree_rss_mib() - tree_rss_mib(children=False),
                "peak_so_far": max(peak[0], tree_rss_mib()),
                "phase_peaks": {
                    name.split("-")[1]: round(rss, 1)
                    for name, rss in phase_peaks.items()
                    if name.startswith(f"{len(legs)}-")
                },
            }
        )
    sending.set()
    sampler.join()
    rss = max(peak[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({"legs": legs, "rss": rss}))


def leg(server: Server, data: Data, rep: int, variant: str = "", label: str = "") -> dict:
    """What the child sends to one server."""
    return {
        "options": server.also[variant] if variant else server.options,
        "credentials": server.credentials,
        "big_url": server.url(f"ecpds-big{label}"),
        "big_name": f"big-{rep}.bin",
        "small": data.small[:1] if variant else data.small,
        "small_url": server.url(f"ecpds-small-{label}{variant}{rep}"),
    }


def run_child(legs: list[dict], data: Data, small_size: int, work: Path) -> dict:
    job = {
        "store": str(data.store),
        "big": data.big,
        "big_size": data.big_size,
        "small": data.small[:1],
        "small_size": small_size,
        "legs": legs,
    }
    job_file = work / f"job-{uuid.uuid4().hex}.json"
    job_file.touch(mode=0o600)
    job_file.write_text(json.dumps(job))
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(job_file)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"ecpds send failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_ecpds(
    server: Server, data: Data, small_size: int, work: Path, rep: int, variant: str = ""
) -> dict:
    out = run_child([leg(server, data, rep, variant)], data, small_size, work)
    return out["legs"][0] | {"rss": out["rss"]}


# --- the rclone side ----------------------------------------------------------------------


def run_measured(
    args: list[str], env: dict[str, str], work: Path, timeout: float = 3600
) -> tuple[int, str, float, float]:
    """Exit code, stderr, seconds and CPU seconds (user+sys, from wait4) of one command."""
    with tempfile.TemporaryFile(dir=work) as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return proc.returncode, stderr, seconds, usage.ru_utime + usage.ru_stime


def run_rclone(server: Server, data: Data, work: Path, rep: int) -> dict[str, Any]:
    """Seconds and CPU seconds for the big file and for the small ones; None where it failed.

    Each repetition writes new names: rclone skips files the destination already has.
    """
    if server.rclone_env is None or not shutil.which("rclone"):
        return {"big": None, "small": None, "big_cpu": None, "small_cpu": None,
                "failed": "rclone not available"}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    # rclone's S3 client refuses a custom CA bundle with its own transport
    env |= {f"RCLONE_CONFIG_DST_{k}": v for k, v in server.rclone_env.items()}
    config = work / "rclone.conf"
    config.touch()
    base = ["rclone", "--config", str(config), "--retries", "1", "--low-level-retries", "2"]
    run: dict[str, Any] = {}
    failures = []
    big_target = server.rclone_path("rclone-big") + f"/big-{rep}.bin"
    for phase, args in (
        ("big", ["copyto", str(data.source / "big.bin"), big_target]),
        ("small", ["copy", str(data.source / "small"), server.rclone_path(f"rclone-small-{rep}")]),
    ):
        code, stderr, seconds, cpu = run_measured(base + args, env, work)
        ok = code == 0
        run[phase], run[f"{phase}_cpu"] = (seconds, cpu) if ok else (None, None)
        if not ok:
            lines = stderr.strip().splitlines() or ["no output"]
            failures.append(f"rclone {args[0]}: {lines[-1].split(' : ')[-1][:120]}")
    run["failed"] = "; ".join(failures)
    return run


def remove_big(server: Server, rep: int) -> None:
    """Delete both big files of a repetition, so the servers' memory stays flat."""
    from ecpds.core.protocols import open_remote

    for folder in ("ecpds-big", "rclone-big"):
        with (
            contextlib.suppress(Exception),
            open_remote("bench", server.url(folder), server.options, server.credentials) as remote,
        ):
            remote.delete(f"big-{rep}.bin")


# --- the run ------------------------------------------------------------------------------


def best(values: list[float | None]) -> float | None:
    measured = [v for v in values if v is not None]
    return min(measured) if measured else None


def work_folder(big_size: int) -> str | None:
    """/dev/shm when it has room for the data and two copies on a server, else the default.

    Servers write what they receive; on a disk, write-back stalls made the same run
    differ by 2x from one repetition to the next. In memory, both tools see the same server.
    """
    shm = "/dev/shm"
    if os.path.isdir(shm) and shutil.disk_usage(shm).free > 4 * big_size + (2 << 30):
        return shm
    return None


def per_gib(cpu: float | None, size: int) -> float | None:
    return round(cpu / (size / GiB), 2) if cpu is not None else None


def all_protocols(
    protocols: list[str], data: Data, small_size: int, work: Path, notes: dict[str, str]
) -> dict[str, Any]:
    """One child sends to every protocol in turn: the RSS of a worker with all loaded."""
    folders = Folders(work)
    legs, reached = [], []
    try:
        with contextlib.ExitStack() as stack:
            for protocol in protocols:
                try:
                    server = stack.enter_context(SERVERS[protocol](folders))
                except Exception as exc:
                    notes[f"all_{protocol}"] = f"not started: {' '.join(str(exc).split())[:200]}"
                    continue
                except BaseException as exc:
                    if type(exc).__name__ != "Skipped":
                        raise
                    notes[f"all_{protocol}"] = f"not started: {exc}"
                    continue
                legs.append(leg(server, data, 0, label="-all") | {"delete_big": True})
                reached.append(protocol)
            out = run_child(legs, data, small_size, work)
    finally:
        for path in folders.made:
            shutil.rmtree(path, ignore_errors=True)
    return {
        "all_protocols_worker_rss_mib": round(out["rss"], 1),
        "all_protocols_sent": reached,
        "all_protocols_rss_after_mib": {
            p: round(r["rss_after"], 1) for p, r in zip(reached, out["legs"], strict=True)
        },
        "all_protocols_children_rss_after_mib": {
            p: round(r["children_rss_after"], 1) for p, r in zip(reached, out["legs"], strict=True)
        },
        "all_protocols_peak_by_mib": {
            p: round(r["peak_so_far"], 1) for p, r in zip(reached, out["legs"], strict=True)
        },
        "all_protocols_phase_peaks_mib": {
            p: r["phase_peaks"] for p, r in zip(reached, out["legs"], strict=True)
        },
    }


def bench(
    protocols: list[str],
    big_size: int,
    count: int,
    small_size: int,
    repeat: int,
    only: str | None = None,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    notes: dict[str, str] = {}
    peaks: list[float] = []
    measured_also: list[str] = []
    base = work_folder(big_size)
    with tempfile.TemporaryDirectory(prefix="ecpds-bench-", dir=base) as tmp:
        work = Path(tmp)
        data = make_data(work / "data", big_size, count, small_size)
        small_bytes = count * small_size
        for protocol in [] if only == "rss" else protocols:
            folders = Folders(work, repeat=repeat)
            ecpds_runs: list[dict] = []
            rclone_runs: list[dict[str, Any]] = []
            also_runs: dict[str, list[float]] = {}
            try:
                with SERVERS[protocol](folders) as server:
                    # Alternating, so a slow minute on the shared machine hits both tools.
                    for rep in range(repeat):
                        ecpds_runs.append(run_ecpds(server, data, small_size, work, rep))
                        remove_big(server, rep)
                        for variant in server.also:
                            run = run_ecpds(server, data, small_size, work, rep, variant)
                            also_runs.setdefault(variant, []).append(run["big"])
                            remove_big(server, rep)
                        rclone_runs.append(run_rclone(server, data, work, rep))
                        remove_big(server, rep)
            except Exception as exc:  # one protocol failing must not stop the others
                notes[protocol] = f"not measured: {' '.join(str(exc).split())[:200]}"
                print(f"{protocol}: {notes[protocol]}", file=sys.stderr)
                continue
            except BaseException as exc:
                if type(exc).__name__ != "Skipped":  # pytest.skip() inside a peer
                    raise
                notes[protocol] = f"not measured: {exc}"
                continue
            finally:
                for path in folders.made:
                    shutil.rmtree(path, ignore_errors=True)
            mb = big_size / 1e6
            big_s = best([r["big"] for r in ecpds_runs])
            small_s = best([r["small"] for r in ecpds_runs])
            rclone_big = best([r["big"] for r in rclone_runs])
            rclone_small = best([r["small"] for r in rclone_runs])
            mb_s = round(mb / big_s, 1) if big_s else None
            files_s = round(count / small_s, 1) if small_s else None
            rclone_mb_s = round(mb / rclone_big, 1) if rclone_big else None
            rclone_files_s = round(count / rclone_small, 1) if rclone_small else None
            results[f"{protocol}_mb_s"] = mb_s
            results[f"{protocol}_files_per_s"] = files_s
            results[f"{protocol}_rclone_mb_s"] = rclone_mb_s
            results[f"{protocol}_rclone_files_per_s"] = rclone_files_s
            results[f"{protocol}_vs_rclone"] = (
                round(mb_s / rclone_mb_s, 2) if mb_s and rclone_mb_s else None
            )
            results[f"{protocol}_files_vs_rclone"] = (
                round(files_s / rclone_files_s, 2) if files_s and rclone_files_s else None
            )
            # CPU (user+sys, ecpds with its ssh children) per GiB moved: the least of the
            # runs. Beside the rate it says whether a client is bound by its own CPU.
            results[f"{protocol}_cpu_s_per_gib"] = per_gib(
                best([r["big_cpu"] for r in ecpds_runs]), big_size
            )
            results[f"{protocol}_rclone_cpu_s_per_gib"] = per_gib(
                best([r["big_cpu"] for r in rclone_runs]), big_size
            )
            results[f"{protocol}_files_cpu_s_per_gib"] = per_gib(
                best([r["small_cpu"] for r in ecpds_runs]), small_bytes
            )
            results[f"{protocol}_rclone_files_cpu_s_per_gib"] = per_gib(
                best([r["small_cpu"] for r in rclone_runs]), small_bytes
            )
            results[f"{protocol}_runs_mb_s"] = {
                "ecpds": [round(mb / r["big"], 1) for r in ecpds_runs],
                "rclone": [round(mb / r["big"], 1) if r["big"] else None for r in rclone_runs],
            }
            results[f"{protocol}_runs_files_per_s"] = {
                "ecpds": [round(count / r["small"], 1) for r in ecpds_runs],
                "rclone": [
                    round(count / r["small"], 1) if r["small"] else None for r in rclone_runs
                ],
            }
            for variant, seconds in also_runs.items():
                results[f"{protocol}_{variant}_mb_s"] = round(mb / min(seconds), 1)
                measured_also.append(f"{protocol}_{variant}_mb_s")
            rss = max(r["rss"] for r in ecpds_runs)
            results[f"{protocol}_peak_rss_mib"] = round(rss, 1)
            peaks.append(rss)
            failed = "; ".join(sorted({r["failed"] for r in rclone_runs if r["failed"]}))
            if failed:
                notes[protocol] = failed
            print(f"{protocol}: done", file=sys.stderr)
        results["all_protocols_worker_rss_mib"] = None
        if len(protocols) > 1 or only == "rss":
            try:
                results |= all_protocols(protocols, data, small_size, work, notes)
            except Exception as exc:
                notes["all_protocols"] = f"not measured: {' '.join(str(exc).split())[:200]}"
            print("all protocols in one worker: done", file=sys.stderr)
    results["peak_worker_rss_mib"] = round(max(peaks), 1) if peaks else None
    results["big_file_mib"] = big_size / MiB
    results["small_files"] = count
    results["small_file_kib"] = small_size / 1024
    results["repeat"] = repeat
    results["work_folder"] = base or tempfile.gettempdir()
    results["also"] = measured_also
    results["notes"] = notes
    return results


def table(results: dict[str, Any], protocols: list[str]) -> str:
    columns = [
        ("MB/s", "mb_s"),
        ("rclone MB/s", "rclone_mb_s"),
        ("vs rclone", "vs_rclone"),
        ("CPU s/GiB", "cpu_s_per_gib"),
        ("rclone CPU s/GiB", "rclone_cpu_s_per_gib"),
        ("files/s", "files_per_s"),
        ("rclone files/s", "rclone_files_per_s"),
        ("files vs rclone", "files_vs_rclone"),
        ("files CPU s/GiB", "files_cpu_s_per_gib"),
        ("rclone files CPU s/GiB", "rclone_files_cpu_s_per_gib"),
        ("RSS MiB", "peak_rss_mib"),
    ]
    header = ["protocol"] + [title for title, _ in columns]
    rows = [header]
    for p in protocols:
        if f"{p}_mb_s" not in results:
            rows.append([p] + ["-"] * len(columns))
            continue
        cells = [results[f"{p}_{key}"] for _, key in columns]
        rows.append([p] + ["n/a" if c is None else str(c) for c in cells])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    lines.append(
        f"big file {results['big_file_mib']:.0f} MiB, {results['small_files']} small files of"
        f" {results['small_file_kib']:.0f} KiB, {PARALLEL} in flight; best of"
        f" {results['repeat']} alternating runs in {results['work_folder']};"
        f" peak worker RSS {results['peak_worker_rss_mib']} MiB (one protocol per process);"
        " CPU is user+system, ecpds with its ssh children, the least of the runs"
    )
    if results.get("all_protocols_worker_rss_mib") is not None:
        lines.append(
            f"one worker sending to {', '.join(results['all_protocols_sent'])} in turn: peak"
            f" RSS {results['all_protocols_worker_rss_mib']} MiB; after each:"
            f" {results['all_protocols_rss_after_mib']}"
        )
    for p in protocols:
        runs = results.get(f"{p}_runs_mb_s")
        if runs:
            lines.append(f"{p} MB/s by run: ecpds {runs['ecpds']}, rclone {runs['rclone']}")
        runs = results.get(f"{p}_runs_files_per_s")
        if runs:
            lines.append(f"{p} files/s by run: ecpds {runs['ecpds']}, rclone {runs['rclone']}")
    lines += [f"{key}: {results[key]} (ecpds, best run)" for key in results.get("also", [])]
    lines += [f"{p}: {note}" for p, note in results["notes"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="64 MiB and 100 small files")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated")
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs of each tool, alternating; the best counts"
    )
    parser.add_argument(
        "--only",
        choices=["rss"],
        help="rss: only the one worker sending to every protocol (all_protocols_* keys)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        parser.error(f"unknown protocol {unknown[0]!r}: use some of {', '.join(PROTOCOLS)}")
    big_size, count = (64 * MiB, 100) if args.quick else (1024 * MiB, 1000)
    results = bench(protocols, big_size, count, 64 * 1024, max(1, args.repeat), args.only)
    print(json.dumps(results, indent=2) if args.json else table(results, protocols))


if __name__ == "__main__":
    main()
