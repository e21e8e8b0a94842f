"""The portal's /metrics over HTTPS: its numbers are the catalog's, and it counts its doors."""

from __future__ import annotations

import asyncio
import ftplib
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import boto3
import httpx
import pytest
from botocore.config import Config
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlmodel import Session, select

from ecpds.core.db import open_catalog, session_scope
from ecpds.core.devserver import free_port
from ecpds.core.metrics import worker_registry
from ecpds.core.models import (
    AcquiredFile,
    AcquisitionRun,
    DataFile,
    DataTransfer,
    Destination,
    Notification,
    TransferStatus,
)
from ecpds.core.settings import WORKER_METRICS_PORT, WORKER_SDK_METRICS_PORT, Settings

from .conftest import served_portal

Samples = dict[str, list[tuple[dict[str, str], float]]]
DESTINATIONS = ("m-one", "m-two", "m-three")


@dataclass
class Portal:
    settings: Settings
    admin: httpx.Client
    engine: Engine
    login: tuple[str, str]

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.settings.https_port}"


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def by(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(found[k] for k in labels): v for found, v in samples.get(name, [])}


def scrape(portal: Portal) -> Samples:
    answer = httpx.get(f"{portal.base}/metrics", verify=False, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.text)


def seed(portal: Portal) -> None:
    """Destinations and uploads through the REST API, then a few states set in the catalog."""
    api = f"{portal.base}/api/v1"
    for number, name in enumerate(DESTINATIONS):
        notify = {"notify": "store", "topic": f"ecpds/{name}/{{target}}"}
        made = portal.admin.post(f"{api}/destinations", json={"name": name, "notification": notify})
        assert made.status_code == 201, made.text
        for index in range(number + 2):
            put = portal.admin.post(
                f"{api}/destinations/{name}/files",
                params={"name": f"f{index}.bin"},
                content=b"x" * (1000 + index),
            )
            assert put.status_code == 201, put.text
    with session_scope(portal.engine) as session:
        rows = session.exec(select(DataTransfer).order_by(DataTransfer.id)).all()
        assert len(rows) >= 6, "every upload makes a transfer to its destination"
        done, failed, deleted_done, retrying = rows[0], rows[1], rows[2], rows[3]
        retrying.status = TransferStatus.RETR
        done.status, done.bytes_sent = TransferStatus.DONE, 1000
        failed.status = TransferStatus.FAIL
        deleted_done.status, deleted_done.bytes_sent = TransferStatus.DONE, 1002
        deleted_done.deleted = True
        session.add_all([done, failed, deleted_done, retrying])
        one = session.exec(select(Destination).where(Destination.name == DESTINATIONS[0])).one()
        session.add(AcquisitionRun(host="h", destination=one.name, status="ok", found=3))
        session.add(AcquisitionRun(host="h", destination=one.name, status="failed"))
        session.add(AcquisitionRun(host="h", destination=one.name, status="ok"))
        for index in range(2):
            session.add(
                AcquiredFile(destination_id=one.id, key=f"k{index}", target="t", path="p", size=7)
            )


@dataclass
class Truth:
    """What the catalog says, read row by row: what the metrics must match."""

    status: Counter[tuple[str, str]]
    waiting: Counter[str]
    sent: Counter[str]
    backlog: int
    store_files: Counter[str]
    store_bytes: Counter[str]
    runs: Counter[tuple[str, str]]


def catalog_truth(engine: Engine) -> Truth:
    with Session(engine) as session:
        names = {d.id: d.name for d in session.exec(select(Destination)).all()}
        transfers = session.exec(select(DataTransfer)).all()
        files = [f for f in session.exec(select(DataFile)).all() if not f.deleted]
        pending = [n for n in session.exec(select(Notification)).all() if n.pending]
        runs = session.exec(select(AcquisitionRun)).all()
    live = [t for t in transfers if not t.deleted]
    queued = (TransferStatus.WAIT, TransferStatus.SCHE, TransferStatus.RETR)
    sent: Counter[str] = Counter({name: 0 for name in names.values()})
    for t in transfers:
        if t.status == TransferStatus.DONE:
            sent[names[t.destination_id]] += t.bytes_sent
    store_bytes: Counter[str] = Counter()
    for f in files:
        for location in f.locations:
            store_bytes[location] += f.size
    return Truth(
        status=Counter((names[t.destination_id], t.status.value) for t in live),
        waiting=Counter(names[t.destination_id] for t in live if t.status in queued),
        sent=sent,
        backlog=len(pending),
        store_files=Counter(location for f in files for location in f.locations),
        store_bytes=store_bytes,
        runs=Counter((r.destination, r.status) for r in runs),
    )


def as_samples(counts: Counter[Any]) -> dict[tuple[str, ...], float]:
    return {(key if isinstance(key, tuple) else (key,)): float(n) for key, n in counts.items()}


@pytest.fixture
def portal(tmp_path: Path, catalog_url: str) -> Iterator[Portal]:
    """A seeded portal on each catalog (SQLite, and PostgreSQL when configured).

    No Temporal behind it: the uploads' transfers wait in the catalog, as they stay. Its
    counts are read at every scrape (snapshot_seconds 0), so they are the catalog's."""
    home = tmp_path / "var"
    address = f"127.0.0.1:{free_port()}"
    with (
        served_portal(home, address, database_url=catalog_url, snapshot_seconds=0) as (
            settings,
            login,
        ),
        httpx.Client(auth=login, verify=False, timeout=30) as admin,
    ):
        engine = open_catalog(settings.catalog_url)
        served = Portal(settings, admin, engine, login)
        seed(served)
        yield served
        engine.dispose()


def test_the_numbers_are_the_catalogs(portal: Portal) -> None:
    samples = scrape(portal)
    truth = catalog_truth(portal.engine)
    statuses = by(samples, "ecpds_transfers", "destination", "status")
    assert statuses == as_samples(truth.status)
    assert statuses[DESTINATIONS[0], "DONE"] == 1
    assert statuses[DESTINATIONS[0], "FAIL"] == 1
    waiting = by(samples, "ecpds_transfers_waiting", "destination")
    assert {key: n for key, n in waiting.items() if n} == as_samples(truth.waiting)
    assert sum(waiting.values()) == 1
    sent = by(samples, "ecpds_bytes_sent_total", "destination")
    assert sent == as_samples(truth.sent)
    assert sent[DESTINATIONS[0],] + sent[DESTINATIONS[1],] == 2002  # the deleted one counts
    backlog = by(samples, "ecpds_notification_backlog")[()]
    assert backlog == truth.backlog > 0
    assert by(samples, "ecpds_store_files", "location") == as_samples(truth.store_files)
    assert by(samples, "ecpds_store_bytes", "location") == as_samples(truth.store_bytes)
    assert sum(truth.store_files.values()) >= 9
    runs = by(samples, "ecpds_acquisition_runs", "destination", "status")
    assert runs == as_samples(truth.runs)
    assert runs[DESTINATIONS[0], "ok"] == 2
    assert by(samples, "ecpds_acquired_files", "destination") == {(DESTINATIONS[0],): 2.0}
    assert by(samples, "ecpds_acquired_bytes", "destination") == {(DESTINATIONS[0],): 14.0}
    assert by(samples, "ecpds_catalog_scrape_seconds")[()] < 1


def ftp_put_get(portal: Portal, path: str, body: bytes) -> bytes:
    got = bytearray()
    with ftplib.FTP() as session:
        session.connect("127.0.0.1", portal.settings.ftp_port, timeout=30)
        session.login(*portal.login)
        session.storbinary(f"STOR {path}", io.BytesIO(body))
        session.retrbinary(f"RETR {path}", got.extend)
    return bytes(got)


async def sftp_put_get(portal: Portal, path: str, body: bytes) -> bytes:
    user, password = portal.login
    async with (
        asyncssh.connect(
            "127.0.0.1", portal.settings.sftp_port, username=user, password=password,
            known_hosts=None, client_keys=None,
        ) as conn,
        conn.start_sftp_client() as client,
    ):  # fmt: skip
        async with client.open(path, "wb") as handle:
            await handle.write(body)
        async with client.open(path, "rb") as handle:
            return bytes(await handle.read())


def s3_put_get(portal: Portal, bucket: str, key: str, body: bytes) -> bytes:
    user = portal.login[0]
    keys = portal.admin.post(f"{portal.base}/api/v1/users/{user}/keys").json()
    client = boto3.client(
        "s3",
        endpoint_url=f"https://127.0.0.1:{portal.settings.s3_port}",
        aws_access_key_id=keys["access_key_id"],
        aws_secret_access_key=keys["secret_access_key"],
        region_name="us-east-1",
        verify=False,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    client.put_object(Bucket=bucket, Key=key, Body=body)
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_the_doors_traffic_is_counted(portal: Portal) -> None:
    before = scrape(portal)
    body = b"y" * 4096
    where = DESTINATIONS[2]
    put = portal.admin.put(f"{portal.base}/data/{where}/counted.bin", content=body)
    assert put.status_code == 201, put.text
    assert portal.admin.get(f"{portal.base}/data/{where}/counted.bin").content == body
    assert ftp_put_get(portal, f"/{where}/by-ftp.bin", body) == body
    assert asyncio.run(sftp_put_get(portal, f"/{where}/by-sftp.bin", body)) == body
    assert s3_put_get(portal, where, "by-s3.bin", body) == body
    after = scrape(portal)

    def grew(name: str, *key: str) -> float:
        labels = ("door", "direction") if len(key) == 2 else ("door",)
        return by(after, name, *labels)[key] - by(before, name, *labels).get(key, 0)

    assert grew("ecpds_portal_requests_total", "https") >= 3  # the scrape, the put, the get
    for door in ("ftp", "sftp"):
        assert grew("ecpds_portal_requests_total", door) == 2  # a file written, then read
    assert grew("ecpds_portal_requests_total", "s3") >= 2
    for door in ("https", "s3", "ftp", "sftp"):
        assert grew("ecpds_portal_bytes_total", door, "received") >= len(body), door
        assert grew("ecpds_portal_bytes_total", door, "sent") >= len(body), door


def test_metrics_are_not_in_the_api_description(portal: Portal) -> None:
    spec = portal.admin.get(f"{portal.base}/api/v1/openapi.json").json()
    assert "/metrics" not in spec["paths"]


def test_metrics_for_admins_only_when_not_public(tmp_path: Path) -> None:
    home = tmp_path / "var"
    with served_portal(home, f"127.0.0.1:{free_port()}", metrics_public=False) as (settings, login):
        base = f"https://127.0.0.1:{settings.https_port}"
        anonymous = httpx.get(f"{base}/metrics", verify=False, timeout=30)
        assert anonymous.status_code == 401
        user = {"name": "viewer", "password": "viewer-password-1"}
        made = httpx.post(f"{base}/api/v1/users", json=user, auth=login, verify=False, timeout=30)
        assert made.status_code == 201, made.text
        viewer = httpx.get(
            f"{base}/metrics", auth=("viewer", "viewer-password-1"), verify=False, timeout=30
        )
        assert viewer.status_code == 403
        admin = httpx.get(f"{base}/metrics", auth=login, verify=False, timeout=30)
        assert admin.status_code == 200
        assert "# TYPE ecpds_transfers gauge" in admin.text
        assert by(parse(admin.text), "ecpds_notification_backlog") == {(): 0.0}


def test_the_dashboard_and_scrape_config_name_what_is_served(portal: Portal) -> None:
    """Every metric the Grafana dashboard plots is one ecpds serves, and the example
    scrape config reaches the portal, worker and SDK ports ecpds uses by default."""
    infra = Path(__file__).resolve().parents[2] / "infra"
    served = httpx.get(f"{portal.base}/metrics", verify=False, timeout=30).text
    served += generate_latest(worker_registry()).decode()
    families = {
        re.sub(r"_total$", "", name) for name in re.findall(r"^# TYPE (\w+) ", served, re.M)
    }
    dashboard = json.loads((infra / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    plotted = {
        re.sub(r"_(bucket|total|count|sum)$", "", name)
        for expr in exprs
        for name in re.findall(r"\becpds_\w+", expr)
    }
    assert plotted, "the dashboard plots ecpds metrics"
    assert plotted <= families, plotted - families
    config = (infra / "prometheus.yml").read_text()
    for port in (Settings().https_port, WORKER_METRICS_PORT, WORKER_SDK_METRICS_PORT):
        assert f"127.0.0.1:{port}" in config
