"""Figures that predict a cluster's load, not this machine's speed: what one small transfer
costs Temporal (history events), a worker (CPU) and the catalog (SQL statements), each
beside a bare one-activity workflow run by a worker with the same limits.

    events_per_small_transfer       the transfer workflow's history events plus its share
                                    of the destination scheduler's (every run of it)
    events_per_bare_workflow        the bare workflow's history events
    worker_cpu_ms_per_small_transfer / worker_cpu_ms_per_bare_workflow
    catalog_queries_per_transfer    SQL statements per transfer: the worker's, and those of
                                    the registration (what a portal runs for an upload)
    autoscale_up_s / autoscale_down_s
                                    `ecpds up --workers 1..4` with 5,000 transfers waiting:
                                    seconds from the first wake-up to 4 workers, and from
                                    the last DONE back to 1

Prints a table, or with --json one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from temporalio.client import Client

from ecpds.core import catalog
from ecpds.core.db import open_catalog, session_scope
from ecpds.core.devserver import dev_server_command, free_port, wait_for_temporal
from ecpds.core.dispatch import TemporalDispatcher
from ecpds.core.engine import destination_workflow_id, transfer_workflow_id
from ecpds.core.ingest import ingest
from ecpds.core.models import DestinationCreate, HostCreate
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.core.store import open_store

sys.path.insert(0, str(Path(__file__).parent))
from dissemination import (  # noqa: E402
    BARE_QUEUE,
    bare_workflows,
    process,
    register_small,
    serve_worker,
    wait_done,
    worker_environment,
)
from submit import UP_PORTS, figures_parser, log, report  # noqa: E402

QUERIES_FILE = "ECPDS_BENCH_QUERIES_FILE"  # where a counting worker writes its statements
LABELS = {
    "events_per_small_transfer": "history events per small transfer",
    "events_per_bare_workflow": "history events per bare workflow",
    "events_ratio": "events ratio (target <= 1.5)",
    "worker_cpu_ms_per_small_transfer": "worker CPU ms per small transfer",
    "worker_cpu_ms_per_bare_workflow": "worker CPU ms per bare workflow",
    "cpu_ratio": "worker CPU ratio",
    "worker_queries_per_transfer": "catalog statements per transfer (worker)",
    "register_queries_per_transfer": "catalog statements per transfer (registration)",
    "catalog_queries_per_transfer": "catalog statements per transfer (all)",
    "autoscale_up_s": "1 to 4 workers under 5,000 waiting (s)",
    "autoscale_down_s": "back to 1 worker once idle (s)",
}
# Up to 4 workers: each needs its metrics ports free too.
WORKER_PORTS = ("WORKER_METRICS_PORT", "WORKER_SDK_METRICS_PORT")


class Statements:
    """Counts the SQL statements every engine of this process runs."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        event.listen(Engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        with self.lock:
            self.count += 1


def serve_counting_worker(kind: str) -> None:
    """A worker process that writes how many statements it ran, every half second."""
    statements = Statements()
    path = Path(os.environ[QUERIES_FILE])

    def write() -> None:
        while True:
            path.write_text(str(statements.count))
            time.sleep(0.5)

    threading.Thread(target=write, daemon=True).start()
    asyncio.run(serve_worker(kind))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_statements(path: Path) -> int:
    time.sleep(1.0)  # one more write of the counter after the work
    return int(path.read_text() or 0)


async def history_events(client: Client, workflow_id: str, *, every_run: bool = False) -> int:
    """Events of the workflow's latest run, or of every run (continued-as-new included)."""
    if not every_run:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        return len(history.events)
    total = 0
    async for execution in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        handle = client.get_workflow_handle(workflow_id, run_id=execution.run_id)
        total += len((await handle.fetch_history()).events)
    return total


async def run(args: argparse.Namespace) -> dict[str, float]:
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ecpds-scale-") as tmp_name:
        tmp = Path(tmp_name)
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
        with session_scope(engine) as session:
            catalog.create_host(
                session, box=box, data=HostCreate(name="local", url=f"file://{tmp / 'out'}")
            )
            catalog.create_destination(
                session,
                data=DestinationCreate(name="small", hosts=["local"], max_connections=64),
            )
        here = Path(__file__).resolve()
        counted = tmp / "worker-statements"
        environment = worker_environment(settings) | {QUERIES_FILE: str(counted)}
        server_cmd = dev_server_command(tmp / "temporal.db", port, free_port(), ui=False)
        with process(server_cmd, tmp / "temporal.log") as server:
            wait_for_temporal(port, 90, server)
            with (
                process(
                    [sys.executable, str(here), "--worker", "ecpds"],
                    tmp / "worker.log",
                    env=environment,
                ) as worker,
                process(
                    [sys.executable, str(here), "--worker", "bare"],
                    tmp / "bare.log",
                    env=environment | {QUERIES_FILE: str(tmp / "bare-statements")},
                ) as bare,
            ):
                client = await Client.connect(settings.temporal_target)
                dispatcher = TemporalDispatcher(client, settings.task_queue, engine)
                await bare_workflows(client, 50)  # warm up
                log(f"bare: {args.count} workflows")
                before = cpu_seconds(bare.pid)
                await bare_workflows(client, args.count)
                bare_cpu = cpu_seconds(bare.pid) - before
                bare_id = f"scale-bare-{time.time_ns()}"
                from bare import BareWorkflow  # type: ignore[import-not-found]

                await client.execute_workflow(
                    BareWorkflow.run, 0, id=bare_id, task_queue=BARE_QUEUE
                )
                results["events_per_bare_workflow"] = await history_events(client, bare_id)
                results["worker_cpu_ms_per_bare_workflow"] = 1000 * bare_cpu / args.count

                log(f"small: registering {args.count} transfers")
                statements = Statements()
                ids = await register_small(engine, store, args.count)
                registered = statements.count
                worker_before = worker_statements(counted)
                cpu_before = cpu_seconds(worker.pid)
                await dispatcher.queue(ids)
                await wait_done(engine, ids)
                worker_cpu = cpu_seconds(worker.pid) - cpu_before
                worker_queries = worker_statements(counted) - worker_before
                transfer_events = sum(
                    [
                        await history_events(client, transfer_workflow_id("small", tid))
                        for tid in ids
                    ]
                )
                scheduler_events = await history_events(
                    client, destination_workflow_id("small"), every_run=True
                )
                results["events_per_small_transfer"] = (
                    transfer_events + scheduler_events
                ) / args.count
                results["worker_cpu_ms_per_small_transfer"] = 1000 * worker_cpu / args.count
                results["worker_queries_per_transfer"] = worker_queries / args.count
                results["register_queries_per_transfer"] = registered / args.count
                worker.send_signal(signal.SIGTERM)
    results["events_ratio"] = (
        results["events_per_small_transfer"] / results["events_per_bare_workflow"]
    )
    results["cpu_ratio"] = (
        results["worker_cpu_ms_per_small_transfer"] / results["worker_cpu_ms_per_bare_workflow"]
    )
    results["catalog_queries_per_transfer"] = (
        results["worker_queries_per_transfer"] + results["register_queries_per_transfer"]
    )
    return results


async def autoscaling(count: int) -> dict[str, float]:
    """`ecpds up --workers 1..4` on a catalog where `count` transfers wait (spread over 10
    destinations to one host slowed to 16 KiB/s, 4 KiB each): when it has 4 workers, and
    when it is back to 1 after the last DONE."""
    from ecpds.cli.supervisor import read_pids

    with tempfile.TemporaryDirectory(prefix="ecpds-autoscale-") as tmp_name:
        tmp = Path(tmp_name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECPDS_")}
        env |= {f"ECPDS_{name}": str(free_port()) for name in (*UP_PORTS, *WORKER_PORTS)}
        env |= {
            "ECPDS_HOME": str(tmp / "var"),
            "ECPDS_WORKER_SLOTS": "16",
            "ECPDS_WORKER_SCALE_BACKLOG": "50",
            "ECPDS_WORKER_SCALE_IN_AFTER": "5",
        }
        settings = Settings(home=tmp / "var")
        engine = open_catalog(settings.catalog_url)
        store = open_store(settings)
        box = CredentialBox(load_or_create_key(settings.key_file))
        names = [f"d{i}" for i in range(10)]
        with session_scope(engine) as session:
            catalog.create_host(
                session,
                box=box,
                data=HostCreate(
                    name="slow", url=f"file://{tmp / 'out'}", options={"max_rate": 16 << 10}
                ),
            )
            for name in names:
                catalog.create_destination(
                    session,
                    data=DestinationCreate(name=name, hosts=["slow"], max_connections=32),
                )
        data = os.urandom(4096)

        async def one(i: int) -> int:
            async def body() -> Any:
                yield data

            result = await ingest(
                engine=engine,
                store=store,
                destination=names[i % len(names)],
                name=f"a{i:05d}",
                chunks=body(),
            )
            return result.transfer_ids[0]

        ids: list[int] = []
        for start in range(0, count, 100):
            ids += await asyncio.gather(*(one(i) for i in range(start, min(count, start + 100))))
        log(f"autoscale: {count} transfers wait; ecpds up --workers 1..4")
        pids = tmp / "var" / "run" / "ecpds.pids"
        ecpds = str(Path(sys.executable).with_name("ecpds"))
        with process([ecpds, "up", "--workers", "1..4"], tmp / "up.log", env=env) as up:
            started = time.monotonic()  # the worker's start wakes every destination
            while len([n for n in read_pids(pids) if n.startswith("worker")]) < 4:
                if up.poll() is not None or time.monotonic() - started > 600:
                    raise SystemExit(f"ecpds up never reached 4 workers: see {tmp / 'up.log'}")
                await asyncio.sleep(0.2)
            scaled_up = time.monotonic() - started
            await wait_done(engine, ids)
            idle = time.monotonic()
            while len([n for n in read_pids(pids) if n.startswith("worker")]) > 1:
                if time.monotonic() - idle > 600:
                    raise SystemExit("ecpds up never went back to 1 worker")
                await asyncio.sleep(0.2)
            scaled_down = time.monotonic() - idle
            subprocess.run([ecpds, "down"], env=env, capture_output=True, timeout=180)
        return {"autoscale_up_s": scaled_up, "autoscale_down_s": scaled_down}


def main() -> None:
    parser = figures_parser(__doc__)
    parser.add_argument("--count", type=int, default=500, help="small transfers (and bare runs)")
    parser.add_argument("--backlog", type=int, default=5000, help="transfers for the autoscaler")
    parser.add_argument("--worker", choices=("ecpds", "bare"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve_counting_worker(args.worker)
        return
    results = asyncio.run(run(args))
    if args.backlog:
        results |= asyncio.run(autoscaling(args.backlog))
    report(results, as_json=args.json, labels=LABELS)


if __name__ == "__main__":
    main()
