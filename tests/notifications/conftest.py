"""Notification fixtures: the catalog and a Temporal client (the publishing worker is
started by each test, with the settings it needs), outbox rows, and MQTT subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from dissemination.conftest import Dissemination, without_worker
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from peers.mqtt import MqttBroker
from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio.service import RPCError

from ecpds.core.db import session_scope
from ecpds.core.models import Notification, utcnow
from ecpds.core.roles import role_queues
from ecpds.workers.notifier import ensure_notifications
from ecpds.workers.worker import build_worker


@pytest.fixture
async def notify_env(
    temporal_server: str, task_queue: str, tmp_path: Path, engine: Engine, catalog_url: str
) -> AsyncIterator[Dissemination]:
    env = await without_worker(temporal_server, task_queue, tmp_path, engine, catalog_url)
    yield env
    # The publisher would wait for a worker of this task queue for ever: end it.
    queues = ", ".join(f"'{queue}'" for queue in role_queues(task_queue))
    query = f"TaskQueue IN ({queues}) AND ExecutionStatus = 'Running'"
    async for execution in env.client.list_workflows(query):
        with contextlib.suppress(RPCError):
            await env.client.get_workflow_handle(execution.id).terminate("the test is over")


@contextlib.asynccontextmanager
async def publishing(env: Dissemination, **settings: Any) -> AsyncIterator[None]:
    """A worker (with `settings` changed) running the outbox's publisher."""
    worker_settings = env.settings.model_copy(update=settings)
    async with build_worker(env.client, worker_settings):
        await ensure_notifications(env.client, worker_settings.task_queue)
        yield


def add_rows(
    engine: Engine,
    *,
    broker: str,
    protocol: str,
    topic: str,
    count: int = 1,
    destination: str = "notify-test",
    expires_in: float | None = 3600,
    qos: int = 1,
    content_type: str | None = "application/json",
) -> list[str]:
    """`count` pending rows in the outbox, as the store would write them; their message ids."""
    ids = []
    now = utcnow()
    with session_scope(engine) as session:
        for index in range(count):
            message_id = str(uuid.uuid4())
            payload = {"id": message_id, "event": "store", "name": f"product-{index}.grib"}
            session.add(
                Notification(
                    message_id=message_id,
                    event="store",
                    destination=destination,
                    broker=broker,
                    protocol=protocol,
                    topic=f"{topic}/product-{index}.grib",
                    payload=json.dumps(payload).encode(),
                    qos=qos,
                    content_type=content_type,
                    expires=None if expires_in is None else now + timedelta(seconds=expires_in),
                    created=now,
                )
            )
            ids.append(message_id)
    return ids


def rows(engine: Engine, message_ids: list[str]) -> list[Notification]:
    with session_scope(engine) as session:
        found = session.exec(
            select(Notification).where(col(Notification.message_id).in_(message_ids))
        ).all()
        for row in found:
            session.expunge(row)
        return list(found)


@dataclass
class Received:
    topic: str
    payload: bytes
    properties: dict[str, Any]

    @property
    def id(self) -> str:
        return json.loads(self.payload)["id"]


@dataclass
class Subscriber:
    """A paho subscriber on its own network thread; what it received, in order."""

    client: mqtt.Client
    messages: list[Received] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self) -> Counter[str]:
        with self.lock:
            return Counter(m.id for m in self.messages)

    async def wait_for(self, message_ids: list[str], timeout: float = 90) -> list[Received]:
        """The messages of `message_ids` once all arrived (a bound, not a timing assertion)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not set(message_ids) <= set(self.ids()):
            missing = set(message_ids) - set(self.ids())
            assert asyncio.get_running_loop().time() < deadline, (
                f"{len(missing)} of {len(message_ids)} notifications never arrived"
            )
            await asyncio.sleep(0.1)
        with self.lock:
            return [m for m in self.messages if m.id in set(message_ids)]

    async def wait_for_count(self, count: int, timeout: float = 90) -> list[Received]:
        """The first `count` messages, once they arrived (a bound, not a timing assertion)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            with self.lock:
                if len(self.messages) >= count:
                    return self.messages[:count]
                got = len(self.messages)
            assert asyncio.get_running_loop().time() < deadline, (
                f"{got} of {count} notifications arrived"
            )
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def subscribed(
    broker: MqttBroker,
    topic: str,
    *,
    version: str = "5",
    client_id: str | None = None,
    persistent: bool = False,
) -> AsyncIterator[Subscriber]:
    """Subscribed to `topic` at QoS 1; `persistent`: a session the broker keeps (MQTT 5)."""
    v5 = version == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"subscriber-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    subscriber = Subscriber(client)
    if broker.user:
        client.username_pw_set(broker.user, broker.password)
    client.reconnect_delay_set(1, 2)

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(topic, qos=1)

    def on_subscribe(client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if not any(r.is_failure for r in reasons):
            subscriber.subscribed.set()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        props: dict[str, Any] = {}
        if v5 and message.properties is not None:
            props = {
                name: getattr(message.properties, name)
                for name in (
                    "MessageExpiryInterval",
                    "ContentType",
                    "PayloadFormatIndicator",
                    "UserProperty",
                )
                if hasattr(message.properties, name)
            }
        with subscriber.lock:
            subscriber.messages.append(Received(message.topic, bytes(message.payload), props))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    if v5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if persistent:
            properties.SessionExpiryInterval = 3600
        client.connect_async(
            broker.host, broker.port, clean_start=not persistent, properties=properties
        )
    else:
        client.connect_async(broker.host, broker.port)
    client.loop_start()
    try:
        # Not blocking the event loop: the broker may run on it (the embedded one).
        deadline = asyncio.get_running_loop().time() + 30
        while not subscriber.subscribed.is_set():
            assert asyncio.get_running_loop().time() < deadline, (
                f"the subscription to {topic} was not granted"
            )
            await asyncio.sleep(0.05)
        yield subscriber
    finally:
        client.disconnect()
        client.loop_stop()
