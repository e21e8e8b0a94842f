"""The same code as many processes against one system: a PostgreSQL catalog, the store on
S3 only, one Temporal server, two portals and three workers (one per role). Products are
pushed through both portals and acquired from a provider's folder while a worker is
killed and a portal stopped; every transfer ends DONE once, every delivered file has its
MD5, and every notification is published and heard once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from notifications.conftest import subscribed
from peers.catalog import PG_URL, fresh_pg_schema
from peers.mqtt import MqttBroker
from peers.ports import PORTAL_PORTS
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from ecpds.core import catalog
from ecpds.core.db import open_catalog, session_scope
from ecpds.core.devserver import free_port, wait_for_port
from ecpds.core.models import DataTransfer, DataUserCreate, Notification
from ecpds.core.roles import Role
from ecpds.core.secrets import load_or_create_key

pytestmark = [
    pytest.mark.skipif(
        not PG_URL,
        reason="the many-process run needs PostgreSQL: set ECPDS_TEST_DATABASE_URL (.ci/run does)",
    ),
    pytest.mark.timeout(600),
]

ADMIN_PASSWORD = "admin-password-many-1"
BOB_PASSWORD = "bob-password-many-1"
ECPDS = str(Path(sys.executable).with_name("ecpds"))


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Cluster:
    tmp: Path
    common: dict[str, str]
    processes: list[Process]
    s3: Any  # the store's only location: this server's bucket
    bucket: str

    def start(self, name: str, *args: str, **settings: Any) -> Process:
        env = dict(os.environ) | self.common | {f"ECPDS_{k}": str(v) for k, v in settings.items()}
        env["ECPDS_HOME"] = str(self.tmp / name)
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(
            [ECPDS, *args], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        process = Process(name, proc, log, env)
        self.processes.append(process)
        return process

    def portal(self, name: str) -> tuple[Process, str, int]:
        ports = {key: free_port() for key in PORTAL_PORTS}
        process = self.start(name, "portal", **ports)
        wait_for_port("127.0.0.1", ports["HTTPS_PORT"], timeout=60, proc=process.proc)
        return process, f"https://127.0.0.1:{ports['HTTPS_PORT']}/api/v1", ports["MQTT_PORT"]

    def worker(self, name: str, role: Role, mqtt_port: int) -> Process:
        return self.start(
            name,
            "worker",
            "--role",
            role.value,
            MQTT_URL=f"mqtt://127.0.0.1:{mqtt_port}",
            WORKER_METRICS_PORT=free_port(),
            WORKER_SDK_METRICS_PORT=free_port(),
        )


@pytest.fixture
def cluster(temporal_server: str, s3_server: Any, tmp_path: Path) -> Iterator[Cluster]:
    bucket = s3_server.bucket()
    fsspec_s3 = {
        "key": s3_server.access_key_id,
        "secret": s3_server.secret_access_key,
        "client_kwargs": {"endpoint_url": s3_server.endpoint, "region_name": s3_server.region},
    }
    key_file = tmp_path / "secret.key"
    load_or_create_key(key_file)  # one key: every process opens the others' credentials
    common = {
        "ECPDS_DATABASE_URL": fresh_pg_schema(PG_URL),
        "ECPDS_STORE_LOCATIONS": json.dumps([f"s3://{bucket}/store"]),
        "ECPDS_SECRET_KEY_FILE": str(key_file),
        "ECPDS_TEMPORAL_ADDRESS": temporal_server,
        "ECPDS_TASK_QUEUE": f"test-{uuid.uuid4().hex[:12]}",
        "FSSPEC_S3": json.dumps(fsspec_s3),
    }
    engine = open_catalog(common["ECPDS_DATABASE_URL"])
    with session_scope(engine) as session:
        catalog.create_user(
            session, data=DataUserCreate(name="admin", admin=True, password=ADMIN_PASSWORD)
        )
    engine.dispose()
    running = Cluster(tmp_path, common, [], s3_server, bucket)
    try:
        yield running
    finally:
        for process in reversed(running.processes):
            process.stop()


def _transfers(engine: Engine) -> list[DataTransfer]:
    with Session(engine) as session:
        return list(session.exec(select(DataTransfer)).all())


async def _until(check: Any, what: str, cluster: Cluster, timeout: float = 240) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (found := await asyncio.to_thread(check)):
        if asyncio.get_running_loop().time() > deadline:
            logs = {p.name: p.log.read_text()[-1500:] for p in cluster.processes}
            raise AssertionError(f"{what}: not so after {timeout} s; logs: {logs}")
        await asyncio.sleep(0.5)
    return found


async def test_two_portals_and_three_workers_lose_nothing(cluster: Cluster) -> None:
    tmp = cluster.tmp
    engine = open_catalog(cluster.common["ECPDS_DATABASE_URL"])
    portal_a, api_a, mqtt_port = cluster.portal("portal-a")
    portal_b, api_b, _ = cluster.portal("portal-b")
    auth = ("admin", ADMIN_PASSWORD)
    provider = tmp / "provider"
    provider.mkdir()
    products: dict[str, bytes] = {}
    for i in range(6):  # waiting at the provider before any worker runs
        products[f"acq-{i}.grib"] = os.urandom(20_000 + i)
        (provider / f"acq-{i}.grib").write_bytes(products[f"acq-{i}.grib"])
    with httpx.Client(auth=auth, verify=False, timeout=60) as admin:
        out = tmp / "out"
        for host in (
            {"name": "many-out", "url": f"file://{out}"},
            {
                "name": "many-in",
                "kind": "acquisition",
                "url": f"file://{provider}",
                "acquisition": {"every": 2, "rules": [{"glob": "*.grib", "settle_age": 0}]},
            },
        ):
            assert admin.post(f"{api_a}/hosts", json=host).status_code == 201
        made = admin.post(
            f"{api_b}/destinations",
            json={
                "name": "many",
                "hosts": ["many-out", "many-in"],
                "max_connections": 3,
                "notification": {"notify": "both"},
            },
        )
        assert made.status_code == 201, made.text
        user = {"name": "bob", "password": BOB_PASSWORD, "destinations": ["many"]}
        assert admin.post(f"{api_a}/users", json=user).status_code == 201

        broker = MqttBroker("127.0.0.1", mqtt_port, "3.1.1", "bob", BOB_PASSWORD)
        async with subscribed(broker, "many/#", version="3.1.1") as paho:
            workers = {
                role: cluster.worker(f"worker-{role.value}", role, mqtt_port) for role in Role
            }

            def upload(api: str, name: str) -> None:
                data = products[name]
                answer = admin.post(
                    f"{api}/destinations/many/files", params={"name": name}, content=data
                )
                assert answer.status_code == 201, (name, answer.text)

            for i in range(24):
                name = f"push-{i}.grib"
                products[name] = os.urandom((2 << 20) if i % 4 == 0 else 30_000 + i)
                if i == 8:  # the dissemination worker dies mid-run; another takes over
                    workers[Role.DISSEMINATION].stop(signal.SIGKILL)
                    workers[Role.DISSEMINATION] = cluster.worker(
                        "worker-dissemination-2", Role.DISSEMINATION, mqtt_port
                    )
                if i == 12:  # one portal stops; the other takes every push after it
                    portal_b.stop()
                await asyncio.to_thread(upload, api_b if i % 2 and i < 12 else api_a, name)
            for i in range(6, 9):  # arriving at the provider while everything runs
                products[f"acq-{i}.grib"] = os.urandom(20_000 + i)
                (provider / f"acq-{i}.grib").write_bytes(products[f"acq-{i}.grib"])

            def all_done() -> list[DataTransfer] | None:
                rows = _transfers(engine)
                done = [t for t in rows if t.status == "DONE"]
                return rows if len(done) == len(products) == len(rows) else None

            transfers = await _until(all_done, "every product delivered", cluster)

            def all_published() -> list[Notification] | None:
                with Session(engine) as session:
                    rows = list(session.exec(select(Notification)).all())
                delivered = [n for n in rows if n.event == "delivery"]
                if len(delivered) < len(products) or any(n.pending for n in rows):
                    return None
                return rows

            outbox = await _until(all_published, "every notification published", cluster)
            heard = await paho.wait_for([n.message_id for n in outbox], timeout=120)

    # Every product became one transfer, delivered once, with its bytes.
    assert sorted(t.target for t in transfers) == sorted(products)
    for transfer in transfers:
        delivered = (out / transfer.target).read_bytes()
        assert hashlib.md5(delivered).digest() == hashlib.md5(products[transfer.target]).digest()
    # Each delivery announced once in the outbox, and heard once.
    deliveries = Counter(n.transfer_id for n in outbox if n.event == "delivery")
    assert set(deliveries) == {t.id for t in transfers} and set(deliveries.values()) == {1}
    assert Counter(m.id for m in heard) == Counter({n.message_id: 1 for n in outbox})
    with Session(engine) as session:
        failed = session.exec(
            select(func.count()).where(col(DataTransfer.last_error).is_not(None))
        ).one()
    assert failed == 0
    # The store was the S3 bucket alone: every product is there.
    listed = cluster.s3.client().list_objects_v2(Bucket=cluster.bucket, Prefix="store/")
    assert listed["KeyCount"] >= len(products)
    engine.dispose()
