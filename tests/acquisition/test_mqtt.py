"""MQTT-triggered acquisition against real brokers (Mosquitto, the embedded amqtt broker),
a real Temporal server and real file servers (OpenSSH, an HTTPS server)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dissemination.conftest import Dissemination, without_worker
from dissemination.test_failover import sftp_credentials, start_worker_process
from peers.mqtt import ADMIN_PASSWORD, BROKER_PASSWORD, BROKER_USER, MqttBroker
from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.engine import subscription_workflow_id
from ecpds.core.models import DataFile, DataTransfer, HostCreate, HostKind
from ecpds.core.roles import role_queues
from ecpds.workers.subscriptions import ensure_subscriptions
from ecpds.workers.worker import build_worker

TOPIC_ROOT = "origin/a/wis2/int-ecpds/data/core/weather"


# --- file sources ---------------------------------------------------------------------------


@dataclass
class FileSource:
    """A folder on a real file server, and what an acquisition host needs to read it."""

    folder: Path
    url: str  # the folder's URL
    credentials: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)

    def put(self, name: str, data: bytes) -> str:
        (self.folder / name).write_bytes(data)
        return f"{self.url}/{name}"


@pytest.fixture(params=["sftp", "https"])
def source(request: pytest.FixtureRequest) -> FileSource:
    name = f"mqtt-{uuid.uuid4().hex[:8]}"
    if request.param == "sftp":
        sshd = request.getfixturevalue("sshd")
        user, credentials = sftp_credentials(sshd)
        folder = sshd.folder(name)
        return FileSource(folder, sshd.url(folder, user=user).rstrip("/"), credentials)
    server = request.getfixturevalue("https_upload_server")
    folder = server.root / name
    folder.mkdir()
    return FileSource(folder, server.url(name), server.credentials, {"ca_file": server.ca_file})


# --- the system under test ------------------------------------------------------------------


@pytest.fixture
async def acquisition_env(
    temporal_server: str, task_queue: str, tmp_path: Path, engine: Engine, catalog_url: str
) -> AsyncIterator[Dissemination]:
    """Catalog, store, client: the worker is started by each test (in or out of process)."""
    env = await without_worker(temporal_server, task_queue, tmp_path, engine, catalog_url)
    client = env.client
    yield env
    # The subscriptions would wait for a worker of this task queue for ever: end them.
    queues = ", ".join(f"'{queue}'" for queue in role_queues(task_queue))
    query = f"TaskQueue IN ({queues}) AND ExecutionStatus = 'Running'"
    async for execution in client.list_workflows(query):
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(execution.id).terminate("the test is over")


def add_mqtt_host(
    env: Dissemination,
    name: str,
    source: FileSource,
    broker: MqttBroker,
    *,
    tls: bool = False,
    **trigger: Any,
) -> None:
    credentials = dict(source.credentials)
    if broker.password:
        credentials["mqtt_password"] = broker.password
    settings = {
        "url": broker.url(tls=tls),
        "topics": [f"{TOPIC_ROOT}/{name}/#"],
        "version": broker.version,
        "session_expiry": 900,  # long enough for a test; the machine's broker forgets us after
        **({"ca_file": broker.ca_file} if tls else {}),
        **trigger,
    }
    with session_scope(env.engine) as session:
        catalog.create_host(
            session,
            box=env.box,
            data=HostCreate(
                name=name,
                url=source.url,
                kind=HostKind.ACQUISITION,
                options=source.options,
                credentials=credentials,
                acquisition={"trigger": "mqtt", "mqtt": settings},
            ),
        )


def wis2_message(
    url: str, data_id: str, data: bytes, *, method: str = "sha512", digest: bytes | None = None
) -> bytes:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    value = digest if digest is not None else hashlib.new(method, data).digest()
    message = {
        "id": str(uuid.uuid4()),
        "conformsTo": ["http://wis.wmo.int/spec/wnm/1/conf/core"],
        "type": "Feature",
        "geometry": None,
        "properties": {
            "data_id": data_id,
            "pubtime": now,
            "datetime": now,
            "integrity": {"method": method, "value": base64.b64encode(value).decode()},
        },
        "links": [
            {"href": url, "rel": "canonical", "type": "application/octet-stream",
             "length": len(data)},
        ],
    }  # fmt: skip
    return json.dumps(message).encode()


def files_from(env: Dissemination, url: str) -> list[DataFile]:
    with session_scope(env.engine) as session:
        return list(session.exec(select(DataFile).where(DataFile.source == url)).all())


def failed_reasons(env: Dissemination, data_file_id: str) -> list[str]:
    with session_scope(env.engine) as session:
        rows = session.exec(
            select(DataTransfer).where(
                DataTransfer.data_file_id == data_file_id, col(DataTransfer.status) == "FAIL"
            )
        ).all()
        return [t.last_error or "" for t in rows]


async def wait_stored(env: Dissemination, url: str, *, timeout: float = 90) -> DataFile:
    """The file fetched from `url` once it is in the store; fails on a failed fetch."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = files_from(env, url)
        if found and found[0].arrived is not None:
            return found[0]
        if found and (reasons := failed_reasons(env, found[0].id)):
            pytest.fail(f"the fetch of {url} failed: {reasons[0]}")
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{url} never reached the store (registered: {bool(found)})")
        await asyncio.sleep(0.2)


async def subscription_state(env: Dissemination, destination: str, host: str) -> dict | None:
    """The running session's counters (its last heartbeat), None before it has subscribed."""
    handle = env.client.get_workflow_handle(subscription_workflow_id(destination, host))
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        return None  # not started yet
    for pending in description.raw_description.pending_activities:
        if pending.heartbeat_details.payloads:
            return json.loads(pending.heartbeat_details.payloads[0].data)
    return None


async def wait_subscribed(
    env: Dissemination, destination: str, host: str, check: Any = None, timeout: float = 90
) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await subscription_state(env, destination, host)
        if state is not None and (check is None or check(state)):
            return state
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"subscription {destination}/{host} never got there: {state}")
        await asyncio.sleep(0.2)


def stored_bytes(env: Dissemination, data_file: DataFile) -> bytes:
    with env.store.open(data_file.id) as stored:
        return stored.read()


async def setup(
    env: Dissemination, source: FileSource, *brokers: tuple[MqttBroker, dict]
) -> tuple[str, list[str]]:
    dest = env.name("acq")
    hosts = []
    for index, (broker, trigger) in enumerate(brokers):
        host = f"{dest}-m{index}"
        add_mqtt_host(env, host, source, broker, **trigger)
        hosts.append(host)
    env.add_destination(dest, hosts)
    return dest, hosts


# --- tests ----------------------------------------------------------------------------------


async def test_wis2_message_fetched_into_store(
    acquisition_env: Dissemination, source: FileSource, mosquitto: MqttBroker
) -> None:
    env = acquisition_env
    dest, [host] = await setup(env, source, (mosquitto, {}))
    data = os.urandom(70_000)
    url = source.put("surface.bufr", data)
    async with build_worker(env.client, env.settings):
        assert await ensure_subscriptions(env.client, env.engine, env.settings.task_queue) == [
            subscription_workflow_id(dest, host)
        ]
        await wait_subscribed(env, dest, host)
        message = wis2_message(url, f"int-ecpds/{dest}/surface.bufr", data)
        await asyncio.to_thread(mosquitto.publish, f"{TOPIC_ROOT}/{host}/synop", [message])
        stored = await wait_stored(env, url)
    assert stored.name == "surface.bufr"
    assert stored_bytes(env, stored) == data
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    assert stored.meta["integrity"] == f"sha512:{digest}"
    assert stored.meta["data_id"] == f"int-ecpds/{dest}/surface.bufr"
    assert stored.reqid == f"wis2:{dest}:int-ecpds/{dest}/surface.bufr"


async def test_same_message_from_two_brokers_fetched_once(
    acquisition_env: Dissemination,
    sshd: Any,
    mosquitto: MqttBroker,
    embedded_broker: MqttBroker,
) -> None:
    env = acquisition_env
    user, credentials = sftp_credentials(sshd)
    folder = sshd.folder(f"twice-{uuid.uuid4().hex[:8]}")
    source = FileSource(folder, sshd.url(folder, user=user).rstrip("/"), credentials)
    dest, hosts = await setup(env, source, (mosquitto, {}), (embedded_broker, {}))
    data = os.urandom(5000)
    url = source.put("twice.grib2", data)
    message = wis2_message(url, f"int-ecpds/{dest}/twice.grib2", data)
    async with build_worker(env.client, env.settings):
        await ensure_subscriptions(env.client, env.engine, env.settings.task_queue)
        for host in hosts:
            await wait_subscribed(env, dest, host)
        for broker, host in zip([mosquitto, embedded_broker], hosts, strict=True):
            await asyncio.to_thread(broker.publish, f"{TOPIC_ROOT}/{host}/model", [message])
        stored = await wait_stored(env, url)
        states = [
            await wait_subscribed(env, dest, host, lambda s: s["received"] == 1) for host in hosts
        ]
    assert sorted((s["registered"], s["duplicates"]) for s in states) == [(0, 1), (1, 0)]
    assert [f.id for f in files_from(env, url)] == [stored.id]
    assert stored_bytes(env, stored) == data
    history = await env.histories(subscription_workflow_id(dest, ""))
    assert f"subscription-{dest}-" in history and ADMIN_PASSWORD not in history


async def test_json_payload_with_custom_fields_over_tls_with_password(
    acquisition_env: Dissemination, sshd: Any, secure_mosquitto: MqttBroker
) -> None:
    env = acquisition_env
    user, credentials = sftp_credentials(sshd)
    folder = sshd.folder(f"json-{uuid.uuid4().hex[:8]}")
    source = FileSource(folder, sshd.url(folder, user=user).rstrip("/"), credentials)
    fields = {"url": "product.location", "id": "uid", "name": "filename"}
    dest, [plain, tls] = await setup(
        env,
        source,
        (secure_mosquitto, {"format": "json", "fields": fields, "version": "3.1.1"}),
        (secure_mosquitto, {"format": "json", "fields": fields, "tls": True}),
    )
    first, second = os.urandom(3000), os.urandom(4000)
    first_url, second_url = source.put("a.nc", first), source.put("b.nc", second)
    async with build_worker(env.client, env.settings):
        await ensure_subscriptions(env.client, env.engine, env.settings.task_queue)
        for host in (plain, tls):
            await wait_subscribed(env, dest, host)
        for host, url, name in ((plain, first_url, "first.nc"), (tls, second_url, "second.nc")):
            payload = json.dumps(
                {"product": {"location": url}, "uid": f"run-{name}", "filename": name}
            ).encode()
            await asyncio.to_thread(
                secure_mosquitto.publish, f"{TOPIC_ROOT}/{host}/x", [payload], tls=host == tls
            )
        stored = [await wait_stored(env, first_url), await wait_stored(env, second_url)]
    assert [f.name for f in stored] == ["first.nc", "second.nc"]
    assert [stored_bytes(env, f) for f in stored] == [first, second]
    assert stored[0].meta["data_id"] == "run-first.nc"
    assert stored[0].reqid == f"mqtt:{dest}:run-first.nc"
    # The broker password is read by the activity, never carried by the engine.
    texts = [await env.histories(subscription_workflow_id(dest, ""))]
    for data_file in stored:
        texts.append(await env.histories(f"retrieval-{data_file.id}"))
        texts.append(await env.histories(f"retrievals-{data_file.id}"))
    history = "\n".join(texts)
    assert f"subscription-{dest}-" in history
    assert BROKER_PASSWORD not in history
    assert sshd.password not in history


async def test_malformed_messages_refused_and_the_subscription_goes_on(
    acquisition_env: Dissemination, sshd: Any, mosquitto: MqttBroker
) -> None:
    env = acquisition_env
    user, credentials = sftp_credentials(sshd)
    folder = sshd.folder(f"bad-{uuid.uuid4().hex[:8]}")
    source = FileSource(folder, sshd.url(folder, user=user).rstrip("/"), credentials)
    dest, [host] = await setup(env, source, (mosquitto, {}))
    data = os.urandom(2000)
    url = source.put("good.bufr", data)
    no_data_id = json.loads(wis2_message(url, "x", data))
    del no_data_id["properties"]["data_id"]
    topic = f"{TOPIC_ROOT}/{host}/synop"
    async with build_worker(env.client, env.settings):
        await ensure_subscriptions(env.client, env.engine, env.settings.task_queue)
        await wait_subscribed(env, dest, host)
        await asyncio.to_thread(
            mosquitto.publish, topic, [b"{not json", json.dumps(no_data_id).encode()]
        )
        state = await wait_subscribed(env, dest, host, lambda s: s["refused"] == 2)
        assert state["last_refused"] == f"{topic}: properties.data_id is missing or not a text"
        await asyncio.to_thread(mosquitto.publish, topic, [wis2_message(url, "good", data)])
        stored = await wait_stored(env, url)
        state = await wait_subscribed(env, dest, host, lambda s: s["registered"] == 1)
    assert stored_bytes(env, stored) == data
    assert state["received"] == 3 and state["refused"] == 2


# The kill waits out the activity's heartbeat timeout; one catalog is enough for that (the
# other tests register and acknowledge on PostgreSQL too).
@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
async def test_worker_killed_during_subscription_loses_nothing(
    acquisition_env: Dissemination, sshd: Any, mosquitto: MqttBroker
) -> None:
    env = acquisition_env
    user, credentials = sftp_credentials(sshd)
    folder = sshd.folder(f"kill-{uuid.uuid4().hex[:8]}")
    source = FileSource(folder, sshd.url(folder, user=user).rstrip("/"), credentials)
    dest, [host] = await setup(env, source, (mosquitto, {}))
    blobs = {f"f{i:02}.bin": os.urandom(1000 + i) for i in range(20)}
    urls = {name: source.put(name, data) for name, data in blobs.items()}
    messages = {
        name: wis2_message(urls[name], f"{dest}/{name}", data) for name, data in blobs.items()
    }
    names = sorted(blobs)
    topic = f"{TOPIC_ROOT}/{host}/synop"
    # The worker process starts the subscription itself (run_worker → ensure_subscriptions).
    worker = start_worker_process(env)
    try:
        await wait_subscribed(env, dest, host)
        await asyncio.to_thread(mosquitto.publish, topic, [messages[n] for n in names[:5]])
        for name in names[:5]:
            await wait_stored(env, urls[name])
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    # Published while no worker holds the session: the broker keeps them for us.
    await asyncio.to_thread(mosquitto.publish, topic, [messages[n] for n in names[5:]])
    async with build_worker(env.client, env.settings):
        stored = [await wait_stored(env, urls[name], timeout=180) for name in names]
    assert [stored_bytes(env, f) for f in stored] == [blobs[n] for n in names]
    assert all(len(files_from(env, urls[n])) == 1 for n in names)


async def test_wrong_broker_password_is_one_line_and_retried(
    acquisition_env: Dissemination, sshd: Any, secure_mosquitto: MqttBroker
) -> None:
    env = acquisition_env
    user, credentials = sftp_credentials(sshd)
    folder = sshd.folder(f"refused-{uuid.uuid4().hex[:8]}")
    source = FileSource(folder, sshd.url(folder, user=user).rstrip("/"), credentials)
    wrong = MqttBroker(
        secure_mosquitto.host, secure_mosquitto.port, "5", BROKER_USER, "Not-The-Password-1"
    )
    dest, [host] = await setup(env, source, (wrong, {}))
    handle = env.client.get_workflow_handle(subscription_workflow_id(dest, host))
    async with build_worker(env.client, env.settings):
        await ensure_subscriptions(env.client, env.engine, env.settings.task_queue)
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            pending = (await handle.describe()).raw_description.pending_activities
            if pending and pending[0].attempt >= 2 and pending[0].last_failure.message:
                break
            assert asyncio.get_running_loop().time() < deadline, "the session never failed"
            await asyncio.sleep(0.2)
    message = pending[0].last_failure.message
    # Mosquitto answers "Not authorized" (MQTT 5) where others say "Bad user name or password".
    prefix = f"subscription {dest}/{host}: mqtt://127.0.0.1:{secure_mosquitto.port}: the broker"
    assert message.startswith(f"{prefix} refused the connection (") and message.endswith(")")
    assert "\n" not in message
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    assert "Not-The-Password-1" not in await env.histories(subscription_workflow_id(dest, ""))


async def test_subscription_of_a_removed_host_ends(
    acquisition_env: Dissemination, sshd: Any, mosquitto: MqttBroker
) -> None:
    env = acquisition_env
    user, credentials = sftp_credentials(sshd)
    folder = sshd.folder(f"gone-{uuid.uuid4().hex[:8]}")
    source = FileSource(folder, sshd.url(folder, user=user).rstrip("/"), credentials)
    dest, [host] = await setup(env, source, (mosquitto, {}))
    task_queue = env.settings.task_queue
    async with build_worker(env.client, env.settings):
        assert await ensure_subscriptions(env.client, env.engine, task_queue) == [
            subscription_workflow_id(dest, host)
        ]
        await wait_subscribed(env, dest, host)
        with session_scope(env.engine) as session:
            catalog.delete_host(session, name=host, force=True)
        assert await ensure_subscriptions(env.client, env.engine, task_queue) == []
        handle = env.client.get_workflow_handle(subscription_workflow_id(dest, host))
        deadline = asyncio.get_running_loop().time() + 60
        while (status := (await handle.describe()).status) == WorkflowExecutionStatus.RUNNING:
            assert asyncio.get_running_loop().time() < deadline, "the subscription goes on"
            await asyncio.sleep(0.2)
    assert status in (WorkflowExecutionStatus.CANCELED, WorkflowExecutionStatus.COMPLETED)


async def test_wrong_integrity_refused_and_named(
    acquisition_env: Dissemination, sshd: Any, mosquitto: MqttBroker
) -> None:
    env = acquisition_env
    user, credentials = sftp_credentials(sshd)
    folder = sshd.folder(f"integrity-{uuid.uuid4().hex[:8]}")
    source = FileSource(folder, sshd.url(folder, user=user).rstrip("/"), credentials)
    dest, [host] = await setup(env, source, (mosquitto, {}))
    data = os.urandom(3000)
    url = source.put("tampered.bufr", data)
    wrong = hashlib.sha512(b"something else").digest()
    async with build_worker(env.client, env.settings):
        await ensure_subscriptions(env.client, env.engine, env.settings.task_queue)
        await wait_subscribed(env, dest, host)
        message = wis2_message(url, f"{dest}/tampered", data, digest=wrong)
        await asyncio.to_thread(mosquitto.publish, f"{TOPIC_ROOT}/{host}/synop", [message])
        deadline = asyncio.get_running_loop().time() + 90
        while True:
            found = files_from(env, url)
            if found and found[0].arrived is not None:
                pytest.fail("a file whose bytes do not match its integrity value was stored")
            if found and (reasons := failed_reasons(env, found[0].id)):
                break
            assert asyncio.get_running_loop().time() < deadline, "the fetch never ended"
            await asyncio.sleep(0.2)
    [reason] = reasons
    assert "integrity check failed" in reason and "sha512" in reason
    assert base64.b64encode(wrong).decode() in reason
    assert "\n" not in reason
    assert not env.store.exists(found[0].id)
