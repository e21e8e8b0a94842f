"""The publisher: outbox rows reach real subscribers (paho-mqtt, MQTT 5 and 3.1.1) on
Mosquitto and on the embedded broker, through a real Temporal worker; a broker away for
30 s delays them and loses none."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import uuid

import pytest
from dissemination.conftest import Dissemination
from dissemination.test_failover import start_worker_process
from peers.catalog import until
from peers.mqtt import ADMIN, ADMIN_PASSWORD, MqttBroker, PrivateMosquitto, serving_embedded
from sqlmodel import select

from ecpds.activities.notification import EXPIRED
from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.engine import notification_workflow_id
from ecpds.core.models import DataUserCreate, Destination
from ecpds.core.notifications import EMBEDDED
from notifications.conftest import add_rows, publishing, rows, subscribed


def topic_root() -> str:
    return f"ecpds-test/{uuid.uuid4().hex[:8]}"


def published(env: Dissemination, message_ids: list[str]) -> bool:
    found = rows(env.engine, message_ids)
    return len(found) == len(message_ids) and all(
        not r.pending and r.published is not None for r in found
    )


async def test_mqtt5_subscriber_sees_expiry_content_type_and_id(
    notify_env: Dissemination, mosquitto: MqttBroker
) -> None:
    env = notify_env
    root = topic_root()
    async with subscribed(mosquitto, f"{root}/#") as subscriber, publishing(env):
        ids = add_rows(env.engine, broker=mosquitto.url(), protocol="5", topic=root, count=5)
        messages = await subscriber.wait_for(ids)
        await asyncio.to_thread(until, lambda: published(env, ids), "the rows marked")
    assert subscriber.ids() == {i: 1 for i in ids}
    for message in messages:
        assert message.topic.startswith(f"{root}/product-")
        assert 3500 < message.properties["MessageExpiryInterval"] <= 3600
        assert message.properties["ContentType"] == "application/json"
        assert message.properties["PayloadFormatIndicator"] == 1
        assert ("id", message.id) in message.properties["UserProperty"]
    marked = rows(env.engine, ids)
    assert all(r.attempts == 0 and r.last_error is None for r in marked)


async def test_mqtt311_subscriber_receives_the_payload(
    notify_env: Dissemination, mosquitto: MqttBroker
) -> None:
    env = notify_env
    root = topic_root()
    async with (
        subscribed(mosquitto, f"{root}/#", version="3.1.1") as subscriber,
        publishing(env),
    ):
        ids = add_rows(env.engine, broker=mosquitto.url(), protocol="3.1.1", topic=root, count=3)
        messages = await subscriber.wait_for(ids)
    assert sorted(m.id for m in messages) == sorted(ids)
    by_id = {r.message_id: r for r in rows(env.engine, ids)}
    assert all(m.payload == by_id[m.id].payload for m in messages)


async def test_expired_row_is_closed_not_published(
    notify_env: Dissemination, mosquitto: MqttBroker
) -> None:
    env = notify_env
    root = topic_root()
    async with subscribed(mosquitto, f"{root}/#") as subscriber, publishing(env):
        [late] = add_rows(
            env.engine, broker=mosquitto.url(), protocol="5", topic=root, expires_in=-5
        )
        fresh = add_rows(env.engine, broker=mosquitto.url(), protocol="5", topic=root)
        await subscriber.wait_for(fresh)
        [row] = await asyncio.to_thread(
            until, lambda: [r for r in rows(env.engine, [late]) if not r.pending], "closed"
        )
    assert row.published is None and row.last_error == EXPIRED
    assert late not in subscriber.ids()


@pytest.mark.one_catalog
async def test_broker_away_30_s_delays_and_loses_nothing(
    notify_env: Dissemination, private_mosquitto: PrivateMosquitto
) -> None:
    """Rows arrive while the broker is stopped; once it is back, each is delivered once."""
    env = notify_env
    broker = private_mosquitto.broker
    root = topic_root()
    async with (
        subscribed(
            broker, f"{root}/#", client_id=f"durable-{uuid.uuid4().hex[:8]}", persistent=True
        ) as subscriber,
        publishing(env),
    ):
        before = add_rows(env.engine, broker=broker.url(), protocol="5", topic=root)
        await subscriber.wait_for(before)
        private_mosquitto.stop()
        during: list[str] = []
        for _ in range(10):  # products keep arriving while the broker is away
            during += add_rows(
                env.engine, broker=broker.url(), protocol="5", topic=f"{root}/away", count=3
            )
            await asyncio.sleep(3)
        waiting = rows(env.engine, during)
        assert all(r.pending for r in waiting)
        tried = [r for r in waiting if r.attempts > 0]
        assert tried and all("cannot reach the broker" in (r.last_error or "") for r in tried)
        private_mosquitto.start()
        await subscriber.wait_for(during, timeout=120)
        await asyncio.to_thread(until, lambda: published(env, during), "the rows marked")
    assert subscriber.ids() == {i: 1 for i in before + during}


async def test_embedded_broker_with_the_publisher_login(notify_env: Dissemination) -> None:
    env = notify_env
    with session_scope(env.engine) as session:
        catalog.create_user(
            session, data=DataUserCreate(name=ADMIN, password=ADMIN_PASSWORD, admin=True)
        )
    root = topic_root()
    async with serving_embedded(env.engine, env.tmp / "portal", env.box) as port:
        broker = MqttBroker("127.0.0.1", port, "3.1.1", ADMIN, ADMIN_PASSWORD)
        async with (
            subscribed(broker, f"{root}/#", version="3.1.1") as subscriber,
            publishing(env, mqtt_port=port, public_host="127.0.0.1"),
        ):
            ids = add_rows(env.engine, broker=EMBEDDED, protocol="3.1.1", topic=root, count=4)
            messages = await subscriber.wait_for(ids)
            await asyncio.to_thread(until, lambda: published(env, ids), "the rows marked")
    assert subscriber.ids() == {i: 1 for i in ids}
    assert all(m.topic.startswith(f"{root}/") for m in messages)


@pytest.mark.one_catalog
async def test_worker_killed_while_publishing_loses_nothing(
    notify_env: Dissemination, mosquitto: MqttBroker
) -> None:
    """The publisher's worker dies (SIGKILL); another one takes over after the heartbeat
    timeout and every notification arrives (a repeat, if any, carries the same id)."""
    env = notify_env
    root = topic_root()
    async with subscribed(mosquitto, f"{root}/#") as subscriber:
        worker = start_worker_process(env)  # runs ensure_notifications at start
        try:
            first = add_rows(env.engine, broker=mosquitto.url(), protocol="5", topic=root, count=50)
            await subscriber.wait_for(first)
        finally:
            worker.send_signal(signal.SIGKILL)
            await asyncio.to_thread(worker.wait)
        after = add_rows(env.engine, broker=mosquitto.url(), protocol="5", topic=root, count=50)
        async with publishing(env):
            await subscriber.wait_for(after, timeout=120)
            await asyncio.to_thread(until, lambda: published(env, first + after), "all marked")
    received = subscriber.ids()
    assert set(received) == set(first + after)


def seal_broker_password(env: Dissemination, destination: str, broker: MqttBroker) -> None:
    """The destination's password for `broker`, sealed as the REST API keeps it."""
    assert broker.password
    with session_scope(env.engine) as session:
        found = session.exec(select(Destination).where(Destination.name == destination)).one()
        found.notification_password_encrypted = env.box.seal({"password": broker.password})
        session.add(found)


async def test_external_broker_login_from_the_destination(
    notify_env: Dissemination, secure_mosquitto: MqttBroker
) -> None:
    """The password of another broker is the destination's, sealed; it never leaves the
    activity (not in the workflow's history)."""
    env = notify_env
    dest = env.name("ext")
    url = f"mqtt://{secure_mosquitto.host}:{secure_mosquitto.port}"
    settings = {"notify": "store", "broker": url, "user": secure_mosquitto.user}
    env.add_destination(dest, [], notification=settings)
    seal_broker_password(env, dest, secure_mosquitto)
    root = topic_root()
    async with subscribed(secure_mosquitto, f"{root}/#") as subscriber, publishing(env):
        ids = add_rows(env.engine, broker=url, protocol="5", topic=root, destination=dest, count=3)
        await subscriber.wait_for(ids)
    assert subscriber.ids() == {i: 1 for i in ids}
    history = await env.histories(notification_workflow_id(env.settings.task_queue))
    assert "notifications-" in history and secure_mosquitto.password not in history


class HungBroker:
    """A TCP listener that accepts and never answers, as a broker that hangs."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted = threading.Event()
        self.closed = threading.Event()  # the publisher gave up on it and hung up
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            connection, _ = self.server.accept()
            self.accepted.set()
            with connection:
                while connection.recv(4096):
                    pass
            self.closed.set()

    def close(self) -> None:
        self.server.close()


@pytest.mark.one_catalog
async def test_a_hung_broker_holds_up_only_its_own_rows(
    notify_env: Dissemination, mosquitto: MqttBroker
) -> None:
    """While the publisher still waits for a hung broker's CONNACK, the rows of another
    broker are published; the hung broker's rows fail with a reason and wait."""
    env = notify_env
    root = topic_root()
    hung = HungBroker()
    try:
        async with subscribed(mosquitto, f"{root}/#") as subscriber, publishing(env):
            stuck = add_rows(
                env.engine, broker=f"mqtt://127.0.0.1:{hung.port}", protocol="5", topic=root
            )
            await asyncio.to_thread(hung.accepted.wait, 60)
            assert hung.accepted.is_set(), "the publisher never connected to the hung broker"
            good = add_rows(env.engine, broker=mosquitto.url(), protocol="5", topic=root, count=5)
            await subscriber.wait_for(good)
            assert not hung.closed.is_set(), "the good broker's rows waited for the hung one"
            await asyncio.to_thread(until, lambda: published(env, good), "the good rows marked")
            await asyncio.to_thread(
                until, lambda: rows(env.engine, stuck)[0].attempts > 0, "the hung row failed"
            )
            [row] = rows(env.engine, stuck)
            assert row.pending and row.last_error and "\n" not in row.last_error
    finally:
        hung.close()


async def test_external_broker_over_tls_checked_with_its_ca(
    notify_env: Dissemination, secure_mosquitto: MqttBroker
) -> None:
    """mqtts:// to a broker whose certificate only its CA file vouches for: with
    `ca_file` the rows arrive; without it they fail in one line and wait."""
    env = notify_env
    url = f"mqtts://127.0.0.1:{secure_mosquitto.tls_port}"
    login = {"notify": "store", "broker": url, "user": secure_mosquitto.user}
    checked, unchecked = env.name("ca"), env.name("noca")
    env.add_destination(checked, [], notification={**login, "ca_file": secure_mosquitto.ca_file})
    env.add_destination(unchecked, [], notification=login)
    for name in (checked, unchecked):
        seal_broker_password(env, name, secure_mosquitto)
    root = topic_root()
    async with subscribed(secure_mosquitto, f"{root}/#") as subscriber, publishing(env):
        good = add_rows(env.engine, broker=url, protocol="5", topic=root, destination=checked)
        bad = add_rows(env.engine, broker=url, protocol="5", topic=root, destination=unchecked)
        await subscriber.wait_for(good)
        await asyncio.to_thread(
            until, lambda: rows(env.engine, bad)[0].attempts > 0, "the unchecked row failed"
        )
    [row] = rows(env.engine, bad)
    assert row.pending and "certificate" in (row.last_error or "").lower()
    assert "\n" not in (row.last_error or "")
    assert set(subscriber.ids()) == set(good)
