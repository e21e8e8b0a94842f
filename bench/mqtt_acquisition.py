"""MQTT-triggered acquisition benchmark: WIS2 notifications published on Mosquitto for files
on a local HTTPS server, from publish to stored.

Starts a Temporal dev server, an HTTPS file server (or, with --source sftp, a local
OpenSSH server) and one `ecpds worker` process in a temporary home; uses the Mosquitto on
127.0.0.1:1883 (or starts one). An acquisition host subscribes with MQTT 5; N messages are
published at once (QoS 1), and each file's time from its publish to its arrival in the
store is read from the catalog. `mqtt_figures` is what bench/acquisition.py calls; with
--json this prints one object (mqtt_files_per_s, mqtt_to_stored_p50_ms, _p99_ms, and
mqtt_registered_per_s: how fast the subscription registers the files it is told about).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import getpass
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import col, select
from submit import figures_parser, log, process, report
from temporalio.client import Client

from ecpds.core import catalog
from ecpds.core.db import open_catalog, session_scope
from ecpds.core.devserver import dev_server_command, free_port, wait_for_port, wait_for_temporal
from ecpds.core.engine import subscription_workflow_id
from ecpds.core.models import DataFile, DestinationCreate, HostCreate, HostKind
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings

KiB = 1 << 10
TOPIC = "origin/a/wis2/int-ecpds/data/core/weather/surface-based-observations/synop"
HTTPS_SERVER = """
import http.server, ssl, sys, functools
port, root, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
handler.log_message = lambda *a: None
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
server.daemon_threads = True
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def mosquitto(tmp: Path) -> Iterator[int]:
    """The machine's Mosquitto on 1883, else one of ours on a free port."""
    if listening(1883):
        yield 1883
        return
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        raise SystemExit("mosquitto is missing (apt-get install mosquitto)")
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")
    with process([binary, "-c", str(conf)], tmp / "mosquitto.log") as proc:
        wait_for_port("127.0.0.1", port, 20, proc)
        yield port


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@contextlib.contextmanager
def file_server(tmp: Path, kind: str) -> Iterator[tuple[Path, str, dict[str, str], dict]]:
    """(folder, folder URL, credentials, options) of a running server holding the files."""
    folder = tmp / "files"
    folder.mkdir()
    if kind == "https":
        cert, key = self_signed(tmp)
        port = free_port()
        cmd = [sys.executable, "-c", HTTPS_SERVER, str(port), str(tmp), str(cert), str(key)]
        with process(cmd, tmp / "https.log") as proc:
            wait_for_port("127.0.0.1", port, 20, proc)
            yield folder, f"https://127.0.0.1:{port}/files", {}, {"ca_file": str(cert)}
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from submit import start_sshd

    (tmp / "sshd").mkdir()
    cmd, port, client_key = start_sshd(tmp / "sshd")
    with process(cmd, tmp / "sshd.log") as proc:
        wait_for_port("127.0.0.1", port, 20, proc)
        user = getpass.getuser()
        url = f"sftp://{user}@127.0.0.1:{port}{folder}"
        yield folder, url, {"private_key": client_key.read_text()}, {}


def wis2_message(url: str, data_id: str, data: bytes) -> bytes:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "conformsTo": ["http://wis.wmo.int/spec/wnm/1/conf/core"],
            "type": "Feature",
            "geometry": None,
            "properties": {
                "data_id": data_id,
                "pubtime": now,
                "datetime": now,
                "integrity": {"method": "sha512", "value": digest},
            },
            "links": [{"href": url, "rel": "canonical", "length": len(data)}],
        }
    ).encode()


def publish_all(port: int, messages: list[bytes]) -> list[float]:
    """Publish every message at QoS 1 as fast as the broker takes them; their epoch times."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    sent, infos = [], []
    try:
        for message in messages:
            sent.append(time.time())
            infos.append(client.publish(TOPIC, message, qos=1))
        for info in infos:
            info.wait_for_publish(timeout=120)
    finally:
        client.disconnect()
        client.loop_stop()
    return sent


async def wait_subscribed(client: Client, workflow_id: str, worker: Any) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit("the worker stopped: see worker.log")
        with contextlib.suppress(Exception):
            description = await client.get_workflow_handle(workflow_id).describe()
            pending = description.raw_description.pending_activities
            if pending and pending[0].heartbeat_details.payloads:
                return
        await asyncio.sleep(0.2)
    raise SystemExit("the subscription never started")


def arrivals(settings: Settings, urls: list[str]) -> dict[str, tuple[float, float]]:
    """(registered, arrived) epoch times of each file in the store, by source URL."""
    engine = open_catalog(settings.catalog_url)
    try:
        with session_scope(engine) as session:
            rows = session.exec(
                select(DataFile.source, DataFile.created, DataFile.arrived).where(
                    col(DataFile.arrived).is_not(None)
                )
            ).all()
    finally:
        engine.dispose()
    wanted = set(urls)
    return {s: (c.timestamp(), a.timestamp()) for s, c, a in rows if s in wanted and a is not None}


async def measure(files: int, size: int, source: str, tmp: Path) -> dict[str, float]:
    home = tmp / "var"
    temporal_port = free_port()
    settings = Settings(
        home=home,
        database_url=f"sqlite:///{tmp / 'catalog.db'}",
        store_locations=[str(tmp / "store")],
        task_queue=f"bench-mqtt-{uuid.uuid4().hex[:8]}",
        temporal_address=f"127.0.0.1:{temporal_port}",
    )
    env = dict(
        os.environ,
        ECPDS_HOME=str(home),
        ECPDS_DATABASE_URL=settings.catalog_url,
        ECPDS_STORE_LOCATIONS=json.dumps(settings.store_urls),
        ECPDS_TASK_QUEUE=settings.task_queue,
        ECPDS_TEMPORAL_ADDRESS=settings.temporal_target,
    )
    temporal = dev_server_command(tmp / "temporal.db", temporal_port, free_port(), ui=False)
    with (
        process(temporal, tmp / "temporal.log") as server,
        mosquitto(tmp) as mqtt_port,
        file_server(tmp, source) as (folder, folder_url, credentials, options),
    ):
        wait_for_temporal(temporal_port, 90, server)
        blobs = {f"obs-{i:04d}.bufr": os.urandom(size) for i in range(files)}
        for name, data in blobs.items():
            (folder / name).write_bytes(data)
        engine = open_catalog(settings.catalog_url)
        box = CredentialBox(load_or_create_key(settings.key_file))
        with session_scope(engine) as session:
            trigger = {
                "url": f"mqtt://127.0.0.1:{mqtt_port}",
                "topics": [f"{TOPIC}/#"],  # also matches TOPIC itself
                "client_id": f"ecpds-bench-{uuid.uuid4().hex[:8]}",
                "session_expiry": 600,
            }
            catalog.create_host(
                session,
                box=box,
                data=HostCreate(
                    name="provider",
                    url=folder_url,
                    kind=HostKind.ACQUISITION,
                    options=options,
                    credentials=credentials,
                    acquisition={"trigger": "mqtt", "mqtt": trigger},
                ),
            )
            catalog.create_destination(
                session, data=DestinationCreate(name="wis2", hosts=["provider"])
            )
        engine.dispose()
        worker_cmd = [sys.executable, "-m", "ecpds.cli.main", "worker"]
        with process(worker_cmd, tmp / "worker.log", env) as worker:
            client = await Client.connect(settings.temporal_target)
            await wait_subscribed(client, subscription_workflow_id("wis2", "provider"), worker)
            urls = [f"{folder_url}/{name}" for name in blobs]
            messages = [
                wis2_message(url, f"int-ecpds/synop/{name}", data)
                for url, (name, data) in zip(urls, blobs.items(), strict=True)
            ]
            log(f"publishing {files} notifications on 127.0.0.1:{mqtt_port}")
            sent = await asyncio.to_thread(publish_all, mqtt_port, messages)
            deadline = time.monotonic() + 600
            while True:
                arrived = await asyncio.to_thread(arrivals, settings, urls)
                if len(arrived) == files:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {len(arrived)} of {files} files arrived in 600 s")
                if worker.poll() is not None:
                    raise SystemExit("the worker stopped: see worker.log")
                await asyncio.sleep(0.5)
    latencies = sorted((arrived[url][1] - at) * 1000 for url, at in zip(urls, sent, strict=True))
    span = max(a for _, a in arrived.values()) - sent[0]
    registered = max(c for c, _ in arrived.values()) - sent[0]
    return {
        "mqtt_files_per_s": files / span,
        "mqtt_registered_per_s": files / registered,  # the subscription's own share
        "mqtt_to_stored_p50_ms": statistics.median(latencies),
        "mqtt_to_stored_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def mqtt_figures(
    files: int = 1000, size: int = 64 * KiB, source: str = "https"
) -> dict[str, float]:
    """The MQTT figures of bench/acquisition.py: N notifications, publish to stored."""
    tmp = Path(tempfile.mkdtemp(prefix="ecpds-bench-mqtt-"))
    tmp.chmod(0o755)
    try:
        return asyncio.run(measure(files, size, source, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = figures_parser(__doc__)
    parser.add_argument("--files", type=int, default=1000, help="notifications published")
    parser.add_argument("--size-kib", type=int, default=64, help="size of each file")
    parser.add_argument("--source", choices=["https", "sftp"], default="https")
    args = parser.parse_args()
    results = mqtt_figures(args.files, args.size_kib * KiB, args.source)
    report(results, as_json=args.json)


if __name__ == "__main__":
    main()
