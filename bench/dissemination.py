"""Dissemination benchmark, measured in one run on this machine.

(a) many 16 KiB transfers to one destination beside a bare one-activity workflow
    (each served by its own worker process with the same limits),
(b) one large file to a local OpenSSH server beside `rclone copy` and `scp`,
(c) the worker's peak memory while it sends a 4 GiB file.
Prints a table, or with --json one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select
from submit import figures_parser, log, report
from temporalio.client import Client

from ecpds.core import catalog
from ecpds.core.db import open_catalog, session_scope
from ecpds.core.devserver import dev_server_command, free_port, wait_for_port, wait_for_temporal
from ecpds.core.dispatch import TemporalDispatcher
from ecpds.core.ingest import ingest
from ecpds.core.models import DataTransfer, DestinationCreate, HostCreate, TransferStatus
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.store import Store, open_store

MiB = 1 << 20
BARE_QUEUE = "bench-bare"


# --- peers --------------------------------------------------------------------------------


@contextmanager
def process(cmd: list[str], logfile: Path, **kwargs: Any) -> Iterator[subprocess.Popen]:
    with logfile.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def sshd_config(folder: Path) -> tuple[list[str], int, Path]:
    """An OpenSSH server for the current user with a fresh key; (command, port, key)."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        raise SystemExit("sshd is missing: run tests/peers/install.sh")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_key, client_key = folder / "host_ed25519", folder / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"PidFile {folder / 'sshd.pid'}\nAuthorizedKeysFile {client_key}.pub\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    return [sshd, "-D", "-e", "-f", str(config)], port, client_key


def work_folder(needed: int) -> str | None:
    """/dev/shm when it has room for the files and their copies at the server, else the
    default: on a disk, write-back stalls made one run differ from the next by 2x."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and shutil.disk_usage(shm).free > needed + (2 << 30):
        return shm
    return None


def worker_environment(settings: Settings) -> dict[str, str]:
    return dict(
        os.environ,
        ECPDS_HOME=str(settings.home),
        ECPDS_DATABASE_URL=settings.catalog_url,
        ECPDS_STORE_LOCATIONS=json.dumps(settings.store_urls),
        ECPDS_TASK_QUEUE=settings.task_queue,
        ECPDS_TEMPORAL_ADDRESS=settings.temporal_target,
    )


async def serve_worker(kind: str) -> None:
    """A worker process: ecpds's own, or the bare workflow's on its own queue."""
    from bare import BareWorkflow, touch  # type: ignore[import-not-found]
    from temporalio.worker import Worker

    from ecpds.workers.worker import build_worker, tune_memory

    tune_memory()  # both as run_worker does
    settings = Settings()
    client = await Client.connect(settings.temporal_target)
    if kind == "ecpds":
        worker = build_worker(client, settings)
    else:
        worker = Worker(
            client,
            task_queue=BARE_QUEUE,
            workflows=[BareWorkflow],
            activities=[touch],
            # The same limits as build_worker, so the two are compared like for like.
            max_concurrent_activities=64,
            max_concurrent_workflow_tasks=64,
            max_cached_workflows=100,
        )
    async with worker:
        await asyncio.Event().wait()


def rss_mib(pid: int) -> float:
    """RSS of the process and its children (the ssh clients of the OpenSSH engine)."""
    total = 0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for each in [str(pid), *(children.read_text().split() if children.exists() else [])]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


# --- measurements ---------------------------------------------------------------------------


def count_done(engine: Engine, ids: list[int]) -> int:
    with Session(engine) as session:
        return session.exec(
            select(func.count())
            .select_from(DataTransfer)
            .where(col(DataTransfer.id).in_(ids))
            .where(DataTransfer.status == TransferStatus.DONE)
        ).one()


async def wait_done(engine: Engine, ids: list[int], on_poll: Any = None) -> float:
    """Seconds until every transfer is DONE (polled every 50 ms)."""
    started = time.monotonic()
    while await asyncio.to_thread(count_done, engine, ids) < len(ids):
        if on_poll:
            on_poll()
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def pattern(size: int) -> AsyncIterator[bytes]:
    block = os.urandom(16 * MiB)
    sent = 0
    while sent < size:
        chunk = block[: min(len(block), size - sent)]
        sent += len(chunk)
        yield chunk


async def put(engine: Engine, store: Store, destination: str, name: str, size: int) -> int:
    result = await ingest(
        engine=engine, store=store, destination=destination, name=name, chunks=pattern(size)
    )
    return result.transfer_ids[0]


async def register_small(engine: Engine, store: Store, count: int) -> list[int]:
    """`count` transfers of 16 KiB files to the destination "small", registered 50 at once."""

    async def one(i: int) -> int:
        async def body() -> AsyncIterator[bytes]:
            yield data

        result = await ingest(
            engine=engine, store=store, destination="small", name=f"s{i:05d}", chunks=body()
        )
        return result.transfer_ids[0]

    data = os.urandom(16 * 1024)
    ids: list[int] = []
    for start in range(0, count, 50):
        ids += await asyncio.gather(*(one(i) for i in range(start, min(count, start + 50))))
    return ids


async def small_transfers(
    engine: Engine, store: Store, dispatcher: TemporalDispatcher, count: int
) -> float:
    ids = await register_small(engine, store, count)
    log(f"small: {count} files registered; dispatching")
    started = time.monotonic()
    await dispatcher.queue(ids)
    await wait_done(engine, ids)
    return count / (time.monotonic() - started)


async def bare_workflows(client: Client, count: int) -> float:
    from bare import BareWorkflow  # type: ignore[import-not-found]

    run = f"bare-{time.time_ns()}"
    started = time.monotonic()
    handles = []
    for start in range(0, count, 100):
        handles += await asyncio.gather(
            *(
                client.start_workflow(BareWorkflow.run, i, id=f"{run}-{i}", task_queue=BARE_QUEUE)
                for i in range(start, min(count, start + 100))
            )
        )
    # Few result long-polls at once: the server limits concurrent pollers per namespace.
    limit = asyncio.Semaphore(50)

    async def result(handle: Any) -> None:
        async with limit:
            await handle.result()

    await asyncio.gather(*(result(h) for h in handles))
    return count / (time.monotonic() - started)


def timed(cmd: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.monotonic() - started


async def run(args: argparse.Namespace) -> dict[str, float]:
    results: dict[str, float] = {}
    largest = max(args.large_mib, args.huge_mib) * MiB
    base = work_folder(2 * largest + args.large_mib * MiB)
    log(f"working in {base or tempfile.gettempdir()}")
    with tempfile.TemporaryDirectory(prefix="ecpds-bench-", dir=base) as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "sshd").mkdir()
        remote = tmp / "remote"
        remote.mkdir()
        sshd_cmd, sshd_port, key = sshd_config(tmp / "sshd")
        port = free_port()
        settings = Settings(
            home=tmp / "var",
            store_locations=[str(tmp / "store")],
            task_queue="bench",
            temporal_address=f"127.0.0.1:{port}",
        )
        engine = open_catalog(settings.catalog_url)
        store = open_store(settings)
        box = CredentialBox(load_or_create_key(settings.key_file))
        user = getpass.getuser()
        with session_scope(engine) as session:
            catalog.create_host(
                session, box=box, data=HostCreate(name="local", url=f"file://{tmp / 'out'}")
            )
            catalog.create_host(
                session,
                box=box,
                data=HostCreate(
                    name="sshd",
                    url=f"sftp://{user}@127.0.0.1:{sshd_port}{remote}",
                    credentials={"private_key": key.read_text()},
                ),
            )
            catalog.create_destination(
                session,
                data=DestinationCreate(name="small", hosts=["local"], max_connections=64),
            )
            catalog.create_destination(
                session, data=DestinationCreate(name="large", hosts=["sshd"], max_connections=1)
            )
        server_cmd = dev_server_command(tmp / "temporal.db", port, free_port(), ui=False)
        here = Path(__file__).resolve()
        worker_cmd = [sys.executable, str(here), "--worker", "ecpds"]
        bare_cmd = [sys.executable, str(here), "--worker", "bare"]
        with (
            process(server_cmd, tmp / "temporal.log") as server,
            process(sshd_cmd, tmp / "sshd.log") as sshd,
        ):
            wait_for_temporal(port, 90, server)
            wait_for_port("127.0.0.1", sshd_port, 20, sshd)
            environment = worker_environment(settings)
            with (
                process(worker_cmd, tmp / "worker.log", env=environment) as worker,
                process(bare_cmd, tmp / "bare.log", env=environment),
            ):
                client = await Client.connect(settings.temporal_target)
                dispatcher = TemporalDispatcher(client, settings.task_queue, engine)
                if args.small:
                    await bare_workflows(client, 50)  # warm up both workers
                    log("bare: running")
                    results["bare_workflows_per_s"] = await bare_workflows(client, args.small)
                    log("small: registering")
                    results["small_transfers_per_s"] = await small_transfers(
                        engine, store, dispatcher, args.small
                    )
                    results["small_rate_ratio"] = (
                        results["small_transfers_per_s"] / results["bare_workflows_per_s"]
                    )
                bench = Bench(engine, store, dispatcher, remote, sshd_port, key, user)
                if args.large_mib:
                    log(f"large: {args.large_mib} MiB")
                    results |= await large_transfer(bench, args.large_mib * MiB, args.repeat)
                if args.huge_mib:
                    log(f"huge: {args.huge_mib} MiB")
                    results["peak_worker_rss_mib"] = await huge_transfer(
                        bench, args.huge_mib * MiB, worker.pid
                    )
    return results


@dataclass
class Bench:
    engine: Engine
    store: Store
    dispatcher: TemporalDispatcher
    remote: Path  # the SFTP server's folder
    sshd_port: int
    key: Path
    user: str


async def large_transfer(bench: Bench, size: int, repeat: int) -> dict[str, float]:
    """One file through ecpds, then the same stored file by rclone and by scp, `repeat`
    times in turn; the best run of each counts (a slow minute on a shared machine then
    hits all three, and is not mistaken for one tool's speed)."""
    runs: dict[str, list[float]] = {"large_sftp_mb_s": [], "rclone_sftp_mb_s": [], "scp": []}
    rclone = shutil.which("rclone")
    if not rclone:
        log("rclone is missing: run tests/peers/install.sh")
    for rep in range(repeat):
        tid = await put(bench.engine, bench.store, "large", f"large-{rep}.bin", size)
        with session_scope(bench.engine) as session:
            transfer = session.get(DataTransfer, tid)
            assert transfer is not None
            data_file_id = transfer.data_file_id
        source = bench.store.primary.key(data_file_id)
        started = time.monotonic()
        await bench.dispatcher.queue([tid])
        await wait_done(bench.engine, [tid])
        runs["large_sftp_mb_s"].append(size / 1e6 / (time.monotonic() - started))
        (bench.remote / f"large-{rep}.bin").unlink()
        if rclone:
            seconds = timed(
                [
                    rclone,
                    "copyto",
                    source,
                    f":sftp:{bench.remote}/rclone.bin",
                    "--sftp-host=127.0.0.1",
                    f"--sftp-port={bench.sshd_port}",
                    f"--sftp-user={bench.user}",
                    f"--sftp-key-file={bench.key}",
                ]
            )
            runs["rclone_sftp_mb_s"].append(size / 1e6 / seconds)
            (bench.remote / "rclone.bin").unlink()
        seconds = timed(
            [
                "scp",
                "-q",
                "-P",
                str(bench.sshd_port),
                "-i",
                str(bench.key),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                source,
                f"{bench.user}@127.0.0.1:{bench.remote}/scp.bin",
            ]
        )
        runs["scp"].append(size / 1e6 / seconds)
        (bench.remote / "scp.bin").unlink()
        bench.store.delete(data_file_id)
        log("large: run {} of {}: {}".format(
            rep + 1, repeat, ", ".join(f"{k} {v[-1]:.0f}" for k, v in runs.items() if v)
        ))  # fmt: skip
    results = {key: max(values) for key, values in runs.items() if values}
    results["scp_sftp_mb_s"] = results.pop("scp")
    if "rclone_sftp_mb_s" in results:
        results["large_vs_rclone"] = results["large_sftp_mb_s"] / results["rclone_sftp_mb_s"]
    return results


async def huge_transfer(bench: Bench, size: int, worker_pid: int) -> float:
    """The worker's peak RSS (MiB, sampled every 50 ms) while it sends one file."""
    tid = await put(bench.engine, bench.store, "large", "huge.bin", size)
    peak = [rss_mib(worker_pid)]
    log(f"huge: stored; worker RSS before sending {peak[0]:.0f} MiB")
    await bench.dispatcher.queue([tid])
    await wait_done(bench.engine, [tid], lambda: peak.append(rss_mib(worker_pid)))
    (bench.remote / "huge.bin").unlink()
    return max(peak)


LABELS = {
    "bare_workflows_per_s": "bare one-activity workflows /s",
    "small_transfers_per_s": "16 KiB transfers /s (one destination)",
    "small_rate_ratio": "small transfers / bare workflows (target >= 0.8)",
    "large_sftp_mb_s": "large file over SFTP, MB/s (best run)",
    "rclone_sftp_mb_s": "rclone copy, same file and server, MB/s (best run)",
    "scp_sftp_mb_s": "scp, same file and server, MB/s (best run)",
    "large_vs_rclone": "ecpds / rclone (target >= 1.0)",
    "peak_worker_rss_mib": "worker (+ ssh child) peak RSS sending 4 GiB, MiB (target < 200)",
}


def main() -> None:
    parser = figures_parser(__doc__)
    parser.add_argument("--small", type=int, default=2000, help="number of 16 KiB transfers")
    parser.add_argument("--large-mib", type=int, default=1024, help="size of the large file")
    parser.add_argument("--huge-mib", type=int, default=4096, help="file sent for peak RSS")
    parser.add_argument(
        "--repeat", type=int, default=3, help="large-file runs of each tool; the best counts"
    )
    parser.add_argument("--worker", choices=("ecpds", "bare"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(serve_worker(args.worker))
        return
    results = asyncio.run(run(args))
    report(results, as_json=args.json, labels=LABELS)


if __name__ == "__main__":
    main()
