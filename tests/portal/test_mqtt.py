"""The embedded MQTT broker: catalog logins, topic permissions, delivery to subscribers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from amqtt.client import MQTTClient
from amqtt.errors import ConnectError
from sqlalchemy import Engine

from ecpds.core.db import session_scope
from ecpds.core.devserver import free_port
from ecpds.core.models import DataUser, DataUserDestination, Destination
from ecpds.core.secrets import hash_password
from ecpds.core.settings import Settings
from ecpds.portal.mqtt import run_broker, topic_matches

READER_PASSWORD = "reader-password-1"
ADMIN_PASSWORD = "admin-password-1"


@pytest.fixture
async def broker(engine: Engine, settings: Settings) -> AsyncIterator[int]:
    with session_scope(engine) as session:
        destination = Destination(
            name="dest1", notification={"notify": "both", "topic": "ecpds/dest1/{target}"}
        )
        reader = DataUser(
            name="reader", password_hash=hash_password(READER_PASSWORD), mqtt_topics=["news/+"]
        )
        admin = DataUser(name="boss", admin=True, password_hash=hash_password(ADMIN_PASSWORD))
        session.add_all([destination, reader, admin])
        session.flush()
        session.add(DataUserDestination(user_id=reader.id, destination_id=destination.id))
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_broker(settings.model_copy(update={"mqtt_port": port}), engine, stop)
    )
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    yield port
    stop.set()
    await task


async def client(port: int, user: str, password: str) -> MQTTClient:
    mqtt = MQTTClient(config={"auto_reconnect": False})
    await mqtt.connect(f"mqtt://{user}:{password}@127.0.0.1:{port}/")
    return mqtt


def test_topic_matches() -> None:
    assert topic_matches("ecpds/dest1/#", "ecpds/dest1/a/b")
    assert topic_matches("news/+", "news/today")
    assert not topic_matches("news/+", "news/today/late")
    assert not topic_matches("news/+", "news/#")
    assert topic_matches("ecpds/#", "ecpds/+/x")
    assert not topic_matches("ecpds/dest1", "ecpds/dest2")


async def test_subscriber_gets_what_admin_publishes(broker: int) -> None:
    reader = await client(broker, "reader", READER_PASSWORD)
    boss = await client(broker, "boss", ADMIN_PASSWORD)
    try:
        granted = await reader.subscribe(
            [("ecpds/dest1/#", 1), ("news/+", 1), ("ecpds/other/#", 1)]
        )
        assert granted[:2] == [1, 1]
        assert granted[2] == 0x80
        await boss.publish("ecpds/dest1/product.grib", b"arrived", qos=1)
        message = await reader.deliver_message(timeout_duration=10)
        assert message is not None
        assert message.topic == "ecpds/dest1/product.grib"
        assert bytes(message.data) == b"arrived"
    finally:
        await reader.disconnect()
        await boss.disconnect()


async def test_wrong_password_and_anonymous_are_refused(broker: int) -> None:
    with pytest.raises(ConnectError):
        await client(broker, "reader", "not-the-password")
    anonymous = MQTTClient(config={"auto_reconnect": False})
    with pytest.raises(ConnectError):
        await anonymous.connect(f"mqtt://127.0.0.1:{broker}/")


async def test_taken_port_is_one_line_error(engine: Engine, settings: Settings) -> None:
    from ecpds.portal.base import PortalError

    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = taken.sockets[0].getsockname()[1]
    try:
        with pytest.raises(PortalError, match=f"MQTT cannot listen on 127.0.0.1:{port}"):
            await run_broker(
                settings.model_copy(update={"mqtt_port": port}), engine, asyncio.Event()
            )
    finally:
        taken.close()
        await taken.wait_closed()


async def test_publisher_login_publishes(broker: int, settings: Settings) -> None:
    from ecpds.core.notifications import PUBLISHER_PURPOSE, PUBLISHER_USER
    from ecpds.core.secrets import CredentialBox, load_or_create_key

    password = CredentialBox(load_or_create_key(settings.key_file)).internal_password(
        PUBLISHER_PURPOSE
    )
    with pytest.raises(ConnectError):
        await client(broker, PUBLISHER_USER, "not-the-password")
    reader = await client(broker, "reader", READER_PASSWORD)
    publisher = await client(broker, PUBLISHER_USER, password)
    try:
        await reader.subscribe([("ecpds/dest1/#", 1)])
        await publisher.publish("ecpds/dest1/from-worker", b"stored", qos=1)
        message = await reader.deliver_message(timeout_duration=10)
        assert message is not None
        assert bytes(message.data) == b"stored"
    finally:
        await reader.disconnect()
        await publisher.disconnect()
