"""The embedded MQTT broker over its three doors (MQTT, MQTTS, MQTT over wss): catalog
logins, the workers' publisher login, topic permissions, retained messages kept in the
catalog across a restart, and a clear refusal of MQTT 5."""

from __future__ import annotations

import asyncio
import queue
import socket
import ssl
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from peers.loop import LoopThread
from sqlalchemy import Engine
from sqlmodel import select

from ecpds.core import catalog
from ecpds.core.db import session_scope
from ecpds.core.devserver import free_port, wait_for_port
from ecpds.core.errors import Invalid
from ecpds.core.models import (
    DataUser,
    DataUserCreate,
    DataUserDestination,
    Destination,
    RetainedMessage,
    utcnow,
)
from ecpds.core.notifications import PUBLISHER_PURPOSE, PUBLISHER_USER
from ecpds.core.secrets import CredentialBox, hash_password, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.portal.base import PortalError
from ecpds.portal.mqtt import RetainedStore, run_broker, topic_matches

READER_PASSWORD = "reader-password-1"
ADMIN_PASSWORD = "admin-password-1"
DOORS = ("tcp", "tls", "wss")
WAIT = 20  # seconds a reply may take on a busy machine before the test gives up


@dataclass
class Broker:
    """The portal's broker on free ports, on a loop of its own; restartable."""

    settings: Settings
    engine: Engine
    loop: LoopThread
    publisher_password: str
    running: tuple[asyncio.Event, Future[Any]] | None = None

    def start(self) -> None:
        stop = asyncio.Event()
        done = self.loop.submit(run_broker(self.settings, self.engine, stop))
        self.running = (stop, done)
        for port in (self.settings.mqtt_port, self.settings.mqtts_port, self.settings.mqtt_ws_port):
            wait_for_port("127.0.0.1", port, timeout=60)

    def stop(self) -> None:
        assert self.running is not None
        stop, done = self.running
        self.loop.loop.call_soon_threadsafe(stop.set)
        done.result(30)
        self.running = None

    def port(self, door: str) -> int:
        return {
            "tcp": self.settings.mqtt_port,
            "tls": self.settings.mqtts_port,
            "wss": self.settings.mqtt_ws_port,
        }[door]


@pytest.fixture
def broker(engine: Engine, settings: Settings) -> Iterator[Broker]:
    with session_scope(engine) as session:
        dest1 = Destination(
            name="dest1", notification={"notify": "both", "topic": "ecpds/dest1/{target}"}
        )
        dest2 = Destination(
            name="dest2", notification={"notify": "both", "topic": "ecpds/dest2/{target}"}
        )
        reader = DataUser(
            name="reader", password_hash=hash_password(READER_PASSWORD), mqtt_topics=["news/+"]
        )
        admin = DataUser(name="boss", admin=True, password_hash=hash_password(ADMIN_PASSWORD))
        session.add_all([dest1, dest2, reader, admin])
        session.flush()
        session.add(DataUserDestination(user_id=reader.id, destination_id=dest1.id))
    settings = settings.model_copy(
        update={
            "bind": "127.0.0.1",
            "mqtt_port": free_port(),
            "mqtts_port": free_port(),
            "mqtt_ws_port": free_port(),
        }
    )
    box = CredentialBox(load_or_create_key(settings.key_file))
    loop = LoopThread()
    running = Broker(settings, engine, loop, box.internal_password(PUBLISHER_PURPOSE))
    running.start()
    try:
        yield running
    finally:
        if running.running is not None:
            running.stop()
        loop.close()


@dataclass
class Client:
    """A paho-mqtt client (callback API 2) whose replies and messages land in queues."""

    paho: mqtt.Client
    connack: queue.Queue[mqtt.ReasonCode] = field(default_factory=queue.Queue)
    subacks: queue.Queue[list[mqtt.ReasonCode]] = field(default_factory=queue.Queue)
    messages: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)
    gone: queue.Queue[mqtt.ReasonCode] = field(default_factory=queue.Queue)

    def subscribe(self, *filters: str) -> list[int]:
        """The SUBACK return code of each filter (0x80: refused)."""
        self.paho.subscribe([(topic, 1) for topic in filters])
        return [code.value for code in self.subacks.get(timeout=WAIT)]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.paho.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT)

    def until(self, topic: str) -> list[mqtt.MQTTMessage]:
        """Every message received up to and including the first one on `topic`."""
        seen = [self.messages.get(timeout=WAIT)]
        while seen[-1].topic != topic:
            seen.append(self.messages.get(timeout=WAIT))
        return seen

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def connect(
    broker: Broker,
    door: str,
    user: str | None,
    password: str | None,
    protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv311,
) -> tuple[Client, mqtt.ReasonCode]:
    """A client connected (or refused) through `door`, and the broker's CONNACK reason."""
    paho = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        protocol=protocol,
        transport="websockets" if door == "wss" else "tcp",
    )
    client = Client(paho)
    paho.on_connect = lambda _c, _u, _f, code, _p: client.connack.put(code)
    paho.on_subscribe = lambda _c, _u, _m, codes, _p: client.subacks.put(codes)
    paho.on_message = lambda _c, _u, message: client.messages.put(message)
    paho.on_disconnect = lambda _c, _u, _f, code, _p: client.gone.put(code)
    if door in ("tls", "wss"):
        # The portal's own certificate, checked against itself: the door really uses it.
        paho.tls_set(ca_certs=str(broker.settings.cert_file), cert_reqs=ssl.CERT_REQUIRED)
    if user is not None:
        paho.username_pw_set(user, password)
    paho.reconnect_delay_set(1, 1)
    paho.connect("127.0.0.1", broker.port(door))
    paho.loop_start()
    try:
        code = client.connack.get(timeout=WAIT)
    except queue.Empty:
        code = client.gone.get(timeout=WAIT)
    if code.is_failure:
        client.close()
    return client, code


def test_topic_matches() -> None:
    assert topic_matches("ecpds/dest1/#", "ecpds/dest1/a/b")
    assert topic_matches("news/+", "news/today")
    assert not topic_matches("news/+", "news/today/late")
    assert not topic_matches("news/+", "news/#")
    assert topic_matches("ecpds/#", "ecpds/+/x")
    assert not topic_matches("ecpds/dest1", "ecpds/dest2")
    assert not topic_matches("ecpds/dest1/#", "ecpds/+/x")


@pytest.mark.parametrize("door", DOORS)
def test_logins_on_every_door(broker: Broker, door: str) -> None:
    for user, password in (
        ("reader", "not-the-password"),
        (PUBLISHER_USER, "not-the-password"),
        (PUBLISHER_USER, READER_PASSWORD),
        (None, None),
    ):
        _, code = connect(broker, door, user, password)
        assert code.is_failure, (user, code)
    for user, password in (
        ("reader", READER_PASSWORD),
        ("boss", ADMIN_PASSWORD),
        (PUBLISHER_USER, broker.publisher_password),
    ):
        client, code = connect(broker, door, user, password)
        assert not code.is_failure, (user, code)
        client.close()


@pytest.mark.parametrize("door", DOORS)
def test_data_user_only_gets_its_destinations(broker: Broker, door: str) -> None:
    reader, _ = connect(broker, door, "reader", READER_PASSWORD)
    publisher, _ = connect(broker, "tcp", PUBLISHER_USER, broker.publisher_password)
    try:
        granted = reader.subscribe(
            "ecpds/dest1/#", "news/+", "ecpds/dest2/#", "ecpds/#", "#", "+/dest2/#", "ecpds/+/x"
        )
        assert granted == [1, 1, 0x80, 0x80, 0x80, 0x80, 0x80]
        publisher.publish("ecpds/dest2/secret.grib", b"not for reader")
        publisher.publish("ecpds/dest1/product.grib", b"arrived")
        publisher.publish("ecpds/dest2/x", b"not for reader either")
        publisher.publish("news/today", b"last")
        seen = reader.until("news/today")
        assert [(m.topic, m.payload) for m in seen] == [
            ("ecpds/dest1/product.grib", b"arrived"),
            ("news/today", b"last"),
        ]
        # A data user publishes nothing, not even on its own topics.
        reader.publish("ecpds/dest1/forged", b"forged")
        publisher.subscribe("ecpds/#")
        publisher.publish("ecpds/dest1/after", b"after")
        assert [m.topic for m in publisher.until("ecpds/dest1/after")] == ["ecpds/dest1/after"]
    finally:
        reader.close()
        publisher.close()


def test_publisher_login_publishes_anywhere(broker: Broker) -> None:
    boss, _ = connect(broker, "tls", "boss", ADMIN_PASSWORD)
    publisher, _ = connect(broker, "wss", PUBLISHER_USER, broker.publisher_password)
    try:
        assert boss.subscribe("#") == [1]
        for topic in ("origin/a/wis2/int-ecpds/data/core/weather", "ecpds/dest2/f", "x"):
            publisher.publish(topic, topic.encode())
            assert [(m.topic, m.payload) for m in boss.until(topic)] == [(topic, topic.encode())]
    finally:
        boss.close()
        publisher.close()


def retained_rows(engine: Engine) -> dict[str, bytes]:
    with session_scope(engine) as session:
        return {row.topic: row.payload for row in session.exec(select(RetainedMessage))}


def test_retained_message_reaches_later_subscribers_and_survives_restart(
    broker: Broker,
) -> None:
    publisher, _ = connect(broker, "tcp", PUBLISHER_USER, broker.publisher_password)
    publisher.publish("ecpds/dest1/latest", b"v1", retain=True)
    publisher.publish("ecpds/dest1/latest", b"v2", retain=True)
    publisher.publish("ecpds/dest1/withdrawn", b"soon gone", retain=True)
    publisher.publish("ecpds/dest1/withdrawn", b"", retain=True)  # clears it
    publisher.publish("ecpds/dest2/theirs", b"other destination", retain=True)
    publisher.close()

    def latest_seen_by_reader(door: str) -> None:
        # Someone else subscribed to everything: its filter must not leak to the reader.
        boss, _ = connect(broker, "tcp", "boss", ADMIN_PASSWORD)
        assert boss.subscribe("#") == [1]
        reader, _ = connect(broker, door, "reader", READER_PASSWORD)
        try:
            assert reader.subscribe("ecpds/dest1/#") == [1]
            message = reader.messages.get(timeout=WAIT)
            assert (message.topic, message.payload, message.retain) == (
                "ecpds/dest1/latest",
                b"v2",
                True,
            )
            # Nothing else is retained under the reader's filter: a live marker comes next.
            marker, _ = connect(broker, "tcp", PUBLISHER_USER, broker.publisher_password)
            marker.publish("ecpds/dest1/marker", b"live")
            marker.close()
            assert [m.topic for m in reader.until("ecpds/dest1/marker")] == ["ecpds/dest1/marker"]
        finally:
            reader.close()
            boss.close()

    latest_seen_by_reader("tls")
    broker.stop()
    assert retained_rows(broker.engine) == {
        "ecpds/dest1/latest": b"v2",
        "ecpds/dest2/theirs": b"other destination",
    }
    broker.start()
    latest_seen_by_reader("wss")
    latest_seen_by_reader("tcp")


@pytest.mark.parametrize("door", DOORS)
def test_mqtt5_connect_is_refused_clearly(broker: Broker, door: str) -> None:
    client, code = connect(broker, door, "reader", READER_PASSWORD, protocol=mqtt.MQTTv5)
    assert code.is_failure
    assert code.value == 0x84, code  # MQTT 5's "Unsupported Protocol Version"
    # The same login in MQTT 3.1.1 is welcome.
    client, code = connect(broker, door, "reader", READER_PASSWORD)
    assert not code.is_failure
    client.close()


def test_taken_port_is_one_line_error(engine: Engine, settings: Settings) -> None:
    ports = {"mqtt_port": free_port(), "mqtts_port": free_port(), "mqtt_ws_port": free_port()}
    for door, attr in (("MQTT", "mqtt_port"), ("MQTTS", "mqtts_port")):
        taken = socket.create_server(("127.0.0.1", ports[attr]))
        try:
            taken_settings = settings.model_copy(update={"bind": "127.0.0.1", **ports})
            with pytest.raises(
                PortalError, match=f"^{door} cannot listen on 127.0.0.1:{ports[attr]}"
            ):
                asyncio.run(run_broker(taken_settings, engine, asyncio.Event()))
        finally:
            taken.close()
    # A failed start closes the doors it had opened.
    for port in ports.values():
        socket.create_server(("127.0.0.1", port)).close()


def test_the_publisher_login_is_no_data_user_name(engine: Engine) -> None:
    with session_scope(engine) as session, pytest.raises(Invalid) as refused:
        catalog.create_user(session, data=DataUserCreate(name=PUBLISHER_USER, password="x" * 12))
    assert "workers' own broker login" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_retained_messages_past_the_retention_are_cleared(broker: Broker) -> None:
    """Each product has its own topic: a retained message lives notification_retention
    days, then is gone from the broker and from the catalog, at a restart or live."""
    broker.stop()
    days = broker.settings.notification_retention
    with session_scope(broker.engine) as session:
        session.add_all(
            [
                RetainedMessage(
                    topic="ecpds/dest1/old",
                    payload=b"last week",
                    qos=1,
                    updated=utcnow() - timedelta(days=days, minutes=1),
                ),
                RetainedMessage(topic="ecpds/dest1/fresh", payload=b"today", qos=1),
            ]
        )
    broker.start()
    reader, _ = connect(broker, "tcp", "reader", READER_PASSWORD)
    try:
        assert reader.subscribe("ecpds/dest1/#") == [1]
        marker, _ = connect(broker, "tcp", PUBLISHER_USER, broker.publisher_password)
        marker.publish("ecpds/dest1/marker", b"live")
        marker.close()
        heard = [(m.topic, m.payload) for m in reader.until("ecpds/dest1/marker")]
        assert heard == [("ecpds/dest1/fresh", b"today"), ("ecpds/dest1/marker", b"live")]
    finally:
        reader.close()
    broker.stop()
    assert retained_rows(broker.engine) == {"ecpds/dest1/fresh": b"today"}
    broker.start()


def test_the_live_sweep_clears_what_outlived_the_retention(engine: Engine) -> None:
    store = RetainedStore(engine, timedelta(hours=1))
    store.note("ecpds/a/old", b"x", 1)
    store.note("ecpds/a/new", b"y", 1)
    asyncio.run(store.flush())
    store.since["ecpds/a/old"] = utcnow() - timedelta(hours=2)
    kept = {"ecpds/a/old": object(), "ecpds/a/new": object()}
    assert store.expire(kept) == 1
    assert set(kept) == {"ecpds/a/new"}
    asyncio.run(store.flush())
    assert retained_rows(engine) == {"ecpds/a/new": b"y"}
